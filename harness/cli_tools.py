"""CLI commands for the tools beside a study (registered on the main app): the watermark codec,
the throughput benchmarks and the toy world. The benchmarks and toy commands hand their arguments
to the module's own argparse `main`, which documents them (`--help`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import typer

from .cli import PlanFmt, app, fail

# Options go to the module's own parser, --help included.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


watermark_app = typer.Typer(help="Embed or detect the invisible watermark of the reference SD scripts.",
                            no_args_is_help=True)
app.add_typer(watermark_app, name="watermark")


@watermark_app.command("detect")
def watermark_detect(
    paths: List[Path] = typer.Argument(..., help="Image files."),
    fmt: PlanFmt = typer.Option(PlanFmt.text, "--format", help="text | jsonl"),
    message: List[str] = typer.Option([], "--message", help="Look for this message: sdv1 | sdv2 | sdxl | any TEXT "
                                                             "(repeatable; default: sdv1, sdv2 and sdxl)."),
) -> None:
    """Statistical detection of the SD v1 / v2 / XL messages (or your own) in image files."""
    from .metrics.watermark import check_preset_case, detect_paths

    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        fail(f"error: no such image file: {', '.join(missing)}")
    try:
        for m in message:
            check_preset_case(m)
        results = detect_paths(paths, message or None)
    except ValueError as e:
        fail(f"error: --message: {e}")
    for r in results:
        if fmt is PlanFmt.jsonl:
            sys.stdout.write(json.dumps(r, default=_json_default) + "\n")
            continue
        if r["detected"] is None:
            typer.echo(f"{r['path']}: cannot decide ({r.get('reason')})")
            continue
        best = r["messages"].get(r.get("best")) or min(r["messages"].values(), key=lambda e: e["p_corrected"])
        verdict = f"DETECTED {r['best']}" if r["detected"] else "not detected"
        typer.echo(f"{r['path']}: {verdict} (best: {best['matched']}/{best['bits']} bits, "
                   f"p={best['p_corrected']:.2g} corrected)")
        for name, why in r.get("not_read", {}).items():
            typer.echo(f"  not read: {name}: {why}")


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


# Formats that lose most of the mark, and what loses it.
LOSSY_SUFFIXES = {".jpg": "compression", ".jpeg": "compression", ".webp": "compression",
                  ".gif": "palette (256 colours)"}


@watermark_app.command("embed")
def watermark_embed(
    src: Path = typer.Argument(..., help="Input image."),
    dst: Path = typer.Argument(..., help="Output image (PNG keeps the mark; JPEG destroys most of it), or a folder "
                                         "to write it into under the input's name."),
    message: str = typer.Option("sdv1", "--message", help="sdv1 | sdv2 | sdxl | any TEXT"),
) -> None:
    """Embed a message the way the reference SD scripts do (dwtDct, BGR)."""
    from .metrics.watermark import check_preset_case, embed_file

    try:
        check_preset_case(message)
    except ValueError as e:
        fail(f"error: --message: {e}")
    if src.is_dir():
        fail(f"error: {src}: a folder; expected the image file to mark")
    if not src.exists():
        fail(f"error: {src}: no such file")
    if dst.is_dir():  # as cp does: into the folder, under the source's name
        if (dst / src.name).resolve() == src.resolve():
            fail(f"error: {dst}: marking {src.name} into its own folder would overwrite it; name the output file "
                 "(give the source's own name to overwrite it on purpose)")
        dst = dst / src.name
        if dst.is_dir():
            fail(f"error: {dst}: a folder of that name is in the way; name the output file")
    elif not dst.suffix and not dst.exists():
        fail(f"error: {dst}: no such folder, and the name has no image suffix to write a file by; give an existing "
             "folder or a file name such as marked.png")
    if not dst.parent.is_dir():  # a typo in the path would otherwise make a folder nobody looks in
        fail(f"error: {dst}: the output folder {dst.parent} does not exist; create it first or fix the path")
    try:
        embed_file(src, dst, message)
    except (ValueError, OSError) as e:
        fail(f"error: {e}")
    typer.echo(f"wrote {dst} with message {message}")
    if dst.suffix.lower() in LOSSY_SUFFIXES:
        typer.echo(f"warning: {dst.suffix} {LOSSY_SUFFIXES[dst.suffix.lower()]} removes most of the mark (detection "
                   "mostly fails after it); save as .png to keep it", err=True)
        return
    _read_back(dst, message)


def _read_back(path: Path, message: str) -> None:
    """Warn when the mark just embedded in `path` is not found the way `detect` looks for it: for this
    message alone, and for a preset also among the three presets (what `detect` without --message and the
    watermark metric's default look for, their p-value corrected for the three)."""
    from .metrics.watermark import DEFAULT_MESSAGES, detect_paths

    (alone,) = detect_paths([path], [message])
    if alone["detected"] is False:
        read = alone["messages"][alone.get("best") or next(iter(alone["messages"]))]
        typer.echo(f"warning: the mark did not take on this image: detection reads {read['matched']} of "
                   f"{read['bits']} bits of {message!r} back (flat areas and some saturated colours carry it poorly); "
                   "the file is written, but detect will not find the mark in it",
                   err=True)
    elif alone["detected"] and message in DEFAULT_MESSAGES:
        (among,) = detect_paths([path])
        if among["detected"] is False:
            read = among["messages"][message]
            typer.echo(f"warning: the mark took only weakly on this image ({read['matched']} of {read['bits']} bits "
                       f"of {message!r} read back): `detect --message {message}` finds it, but `detect` without "
                       f"--message and the watermark metric's default, which look for {', '.join(DEFAULT_MESSAGES)} "
                       "and correct for the three, do not", err=True)


@app.command(context_settings=PASS_THROUGH)
def bench(ctx: typer.Context) -> None:
    """Throughput: the harness runner vs the naive loop (see `harness bench --help`)."""
    from .bench import main as bench_main

    raise typer.Exit(bench_main(ctx.args))


@app.command("bench-unet", context_settings=PASS_THROUGH)
def bench_unet(ctx: typer.Context) -> None:
    """The UNet alone: TFLOP/s of one forward against the card's peak (see `harness bench-unet --help`)."""
    from .bench_unet import main as bench_unet_main

    raise typer.Exit(bench_unet_main(ctx.args))


toy_app = typer.Typer(help="The toy world: a small trained model and CLIP for offline studies.",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("train", context_settings=PASS_THROUGH)
def toy_train(ctx: typer.Context) -> None:
    """Train the toy models (seeded; stages in pipeline order): --what vae|decoder|unet|clip|all --profile cpu|gpu
    --out DIR --device D --workers N --minutes M --stop-at STAGE=STEP --set FIELD=VALUE (--help lists them)."""
    from .toy.train import main as train_main

    train_main(ctx.args, prog="harness toy train")


@toy_app.command("acceptance", context_settings=PASS_THROUGH)
def toy_acceptance(ctx: typer.Context) -> None:
    """Measure the toy models (committed, or --weights DIR) against the oracle: PASS/FAIL, exit 1 on a miss."""
    from .toy.acceptance import main as acceptance_main

    raise typer.Exit(acceptance_main(ctx.args, prog="harness toy acceptance"))
