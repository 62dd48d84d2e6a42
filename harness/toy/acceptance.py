"""Does the `toy` world measure what it claims? Prints a table, PASS or FAIL for each target, and exits 1
when a target is missed (or has no sample to judge it by).

    python -m harness.toy.acceptance [--weights DIR] [--n-oracle 200] [--n-clip 200] [--n-gen 96] [--steps 20]
                                     [--size 128] [--size 256]

The committed weights are measured, or with `--weights DIR` those `harness toy train --out DIR` wrote
(assembled like the committed ones, into `$HARNESS_CACHE`, keyed by the folder's configs.json, which
records every weight file's SHA-256).

1. Oracle: the oracle metrics' agreement with the exact labels of world images (at each `--size`).
2. Toy CLIP: for held-out world images (a seed never used in training), how
   often the true caption scores above four attribute-swapped captions (shape
   colour, shape, background, artist swapped), all five at once and per swap.
3. Toy checkpoint: images generated through the real pipeline
   (`checkpoints.resolve` + `load_pipeline`, DDIM) from held-out captions, read by the oracle:
   colour, shape and background right; the named style detected; and, as a
   control, how often each style's signature shows when the caption does not ask for it.
4. The VAE alone: held-out world images encoded and decoded, read by the oracle
   (the ceiling the VAE sets on what generation can reach).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.toy import oracle, world

HELD_OUT_SEED = 777_000_001  # training uses other seeds (harness.toy.training.SEED)
SWAPS = ("color", "shape", "background", "artist")


_TARGET = re.compile(r">= (\d+(?:\.\d+)?) %")


@dataclass(frozen=True)
class Row:
    check: str
    value: float
    n: int
    target: str = ""  # "" (reported, not judged) or ">= P %"

    def __post_init__(self) -> None:
        if self.target and not _TARGET.fullmatch(self.target):
            raise ValueError(f"Row({self.check!r}): target {self.target!r}: expected '' or '>= P %', e.g. '>= 90 %'")

    @property
    def verdict(self) -> str:
        """PASS or FAIL against the target; n/a with no sample to judge; empty without a target."""
        if not self.target:
            return ""
        if self.n == 0 or not math.isfinite(self.value):
            return "n/a"
        threshold = float(_TARGET.fullmatch(self.target).group(1)) / 100
        return "PASS" if self.value >= threshold - 1e-9 else "FAIL"

    def line(self) -> str:
        value = "n/a" if self.n == 0 else f"{100 * self.value:.1f} %"  # no sample to judge
        return f"| {self.check} | {value} | {self.n} | {self.target} | {self.verdict} |"


HEADER = "| check | value | n | target | result |\n|---|---:|---:|---|---|"


def verdict(rows: list[Row]) -> tuple[int, list[str]]:
    """The exit status (0: every target met; 1: one missed or without a sample) and the lines saying so."""
    judged = [r for r in rows if r.target]
    failed = [r for r in judged if r.verdict == "FAIL"]
    unjudged = [r for r in judged if r.verdict == "n/a"]
    met = len(judged) - len(failed) - len(unjudged)
    lines = [f"acceptance: {'FAIL' if failed or unjudged else 'PASS'}: {met} of {len(judged)} targets met"]
    lines += [f"  missed: {r.check}: {100 * r.value:.1f} %, target {r.target}" for r in failed]
    lines += [f"  not judged (no sample; measure more with --n-oracle/--n-clip/--n-gen): {r.check}" for r in unjudged]
    return (1 if failed or unjudged else 0), lines


def held_out(n: int, seed: int = HELD_OUT_SEED, size: int = 256) -> list[world.Sample]:
    rng = np.random.default_rng(seed)
    return [world.sample(rng, size) for _ in range(n)]


def oracle_rows(n: int = 200, size: int = 256) -> list[Row]:
    samples = held_out(n, HELD_OUT_SEED + 1, size)
    hits = {"color": [], "shape": [], "background": [], "style": []}
    for s in samples:
        a = oracle.analyze(s.image)
        hits["color"].append(a.color == s.labels.color)
        hits["shape"].append(a.shape == s.labels.shape)
        hits["background"].append(a.background == s.labels.background)
        if s.labels.style:
            hits["style"].append(a.has_style(s.labels.style))
    return [Row(f"oracle {k} on world images ({size} px)", float(np.mean(v)), len(v), ">= 99 %")
            for k, v in hits.items()]


def clip_rows(n: int = 200, device: str = "cpu", data_dir=None) -> list[Row]:
    """The toy CLIP (the committed one, or the one in `data_dir`) on held-out world images."""
    import torch
    from PIL import Image

    if data_dir is None:
        from harness.metrics.clip_models import load_clip

        clip = load_clip("toy", "toy", device)
    else:
        from harness.toy import open_toy_clip

        clip = open_toy_clip(Path(data_dir), device)
    rng = np.random.default_rng(HELD_OUT_SEED + 2)
    samples = held_out(n)
    correct, per_swap = [], {k: [] for k in SWAPS}
    for s in samples:
        phrasing = world.sample_phrasing(rng)
        texts = [world.caption(s.labels, phrasing)]
        texts += [world.caption(world.swapped(s.labels, k, rng), phrasing) for k in SWAPS]
        with torch.inference_mode():
            img = clip.model.encode_image(clip.preprocess(Image.fromarray(s.image))[None].to(device)).float()
            txt = clip.model.encode_text(clip.tokenizer(texts).to(device)).float()
        sims = (torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T)[0]
        correct.append(int(sims.argmax()) == 0)
        for j, k in enumerate(SWAPS, start=1):
            per_swap[k].append(bool(sims[0] > sims[j]))
    rows = [Row("toy CLIP: true caption beats all 4 swaps", float(np.mean(correct)), n, ">= 90 %")]
    rows += [Row(f"toy CLIP: true caption beats {k} swap", float(np.mean(v)), n) for k, v in per_swap.items()]
    return rows


def checkpoint(data_dir=None):
    """The checkpoint to generate with: the built-in `toy` (the committed weights), or the weights in
    `data_dir` assembled into a diffusers folder `$HARNESS_CACHE/toy-measure/toy-<configs digest>`."""
    from harness import checkpoints

    if data_dir is None:
        return checkpoints.resolve("toy")
    from harness.atomic import build_folder_once
    from harness.toy import data_digest, models

    data_dir = Path(data_dir)
    folder = checkpoints.cache_dir() / "toy-measure" / f"toy-{data_digest(data_dir)}"
    build_folder_once(folder, "model_index.json", lambda tmp: models.assemble_pipeline(tmp, data_dir))
    return checkpoints.resolve(str(folder))


def generate(prompts: list[str], seeds: list[int], *, size: int = 256, steps: int = 20, guidance: float = 7.5,
             scheduler: str = "ddim", batch: int = 16, device: str = "cpu", pipe=None,
             data_dir=None) -> list[np.ndarray]:
    """Images from the `toy` checkpoint (or the weights in `data_dir`) through the real loading path,
    one generator per image."""
    import torch

    from harness.pipelines import load_pipeline

    if pipe is None:
        pipe = load_pipeline(checkpoint(data_dir), "txt2img", device=device, scheduler=scheduler)
    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        part, part_seeds = prompts[start:start + batch], seeds[start:start + batch]
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in part_seeds]
        out = pipe(part, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="np").images
        images += [np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in out]
    return images


def _read(samples: list[world.Sample], images: list[np.ndarray]) -> tuple[dict, dict, dict]:
    """The oracle on `images` against `samples`' labels: hits per attribute, per style the hits when the
    caption names it, and per style how often its signature shows when the caption does not ask for it."""
    hits: dict[str, list[bool]] = {"color": [], "shape": [], "background": []}
    style_hit: dict[str, list[bool]] = {st: [] for st in world.STYLES}
    false_pos: dict[str, list[bool]] = {st: [] for st in world.STYLES}
    for s, img in zip(samples, images):
        a = oracle.analyze(img)
        hits["color"].append(a.color == s.labels.color)
        hits["shape"].append(a.shape == s.labels.shape)
        hits["background"].append(a.background == s.labels.background)
        if s.labels.style:
            style_hit[s.labels.style].append(a.has_style(s.labels.style))
        for st in world.STYLES:
            if s.labels.style != st and not a.reason:
                false_pos[st].append(a.has_style(st))
    return hits, style_hit, false_pos


def generation_rows(n: int = 96, *, size: int = 256, steps: int = 20, guidance: float = 7.5,
                    scheduler: str = "ddim", device: str = "cpu", data_dir=None) -> list[Row]:
    samples = held_out(n, HELD_OUT_SEED + 3)
    images = generate([s.caption for s in samples], list(range(n)), size=size, steps=steps, guidance=guidance,
                      scheduler=scheduler, device=device, data_dir=data_dir)
    hits, style_hit, false_pos = _read(samples, images)
    where = f"{size} px, {steps} {scheduler} steps, cfg {guidance:g}"
    targets = {"color": ">= 90 %", "shape": ">= 70 %", "background": ""}
    rows = [Row(f"toy images: {k} right ({where})", float(np.mean(v)), len(v), targets[k]) for k, v in hits.items()]
    rows += _style_rows("toy images", where, style_hit, ">= 80 %")
    rows += [Row(f"toy images: {st} signature without asking (false positives)", float(np.mean(v)), len(v))
             for st, v in false_pos.items()]
    return rows


def _style_rows(what: str, where: str, style_hit: dict[str, list[bool]], target: str = "") -> list[Row]:
    """The named style detected: over all styled captions, then per style."""
    every = [hit for hits in style_hit.values() for hit in hits]
    rows = [Row(f"{what}: named style detected ({where})", float(np.mean(every)) if every else math.nan,
                len(every), target)]
    return rows + [Row(f"{what}: {st} detected when named ({where})", float(np.mean(v)), len(v))
                   for st, v in style_hit.items() if v]


def vae_rows(n: int = 96, *, size: int = 128, device: str = "cpu", data_dir=None) -> list[Row]:
    """The ceiling the VAE sets: held-out world images encoded and decoded by the toy VAE (the committed
    one, or the one in `data_dir`), read by the oracle."""
    import json

    import torch

    from harness.toy import models

    data_dir = Path(data_dir or models.DATA_DIR)
    vae = models.build_vae(json.loads((data_dir / models.CONFIGS_FILE).read_text())["vae"])
    models.load_part(vae, "vae", data_dir)
    vae.to(device).eval()
    samples = held_out(n, HELD_OUT_SEED + 4, size)
    images = []
    with torch.no_grad():
        for start in range(0, n, 16):
            part = np.stack([s.image for s in samples[start:start + 16]]).astype(np.float32) / 127.5 - 1.0
            x = torch.from_numpy(part).permute(0, 3, 1, 2).to(device)
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            images += list(((rec + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    hits, style_hit, _ = _read(samples, images)
    rows = [Row(f"VAE round trip: {k} right ({size} px)", float(np.mean(v)), len(v)) for k, v in hits.items()]
    return rows + _style_rows("VAE round trip", f"{size} px", style_hit)


def _at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return value
    return parse


def _size(text: str) -> int:
    value = _at_least(64)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8 (the VAE downsamples by 8), got {value}")
    return value


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 100], got {text!r}")
    return value


def _weights(text: str) -> Path:
    from harness.toy import models

    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder `harness toy train --out` wrote, got {text!r} "
                                         f"(no such folder)")
    missing = [f"{p}.safetensors" for p in models.PARTS if not (folder / f"{p}.safetensors").is_file()]
    missing += [models.CONFIGS_FILE] if not (folder / models.CONFIGS_FILE).is_file() else []
    if missing:
        raise argparse.ArgumentTypeError(f"{text}: no {', '.join(missing)}; acceptance measures every part, so "
                                         f"train them all first (harness toy train --what all --out {text})")
    return folder


def main(argv: list[str] | None = None, prog: str = "python -m harness.toy.acceptance") -> int:
    """Print the table and the verdict; return the exit status (0: every target met, 1: not)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    from harness.schedulers import SCHEDULERS

    parser.add_argument("--weights", type=_weights, default=None, metavar="DIR",
                        help="measure the weights `harness toy train --out DIR` wrote (default: the committed ones)")
    parser.add_argument("--n-oracle", type=_at_least(1), default=200)
    parser.add_argument("--n-clip", type=_at_least(1), default=200)
    parser.add_argument("--n-gen", type=_at_least(1), default=96)
    parser.add_argument("--steps", type=_at_least(1), default=20)
    parser.add_argument("--guidance", type=_guidance, default=7.5)
    parser.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))
    parser.add_argument("--size", type=_size, action="append",
                        help="size(s) the oracle, generation and the VAE are measured at (default 128, the demo's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    args = parser.parse_args(argv)  # bad values exit 2 here, before any measuring
    from harness.core import SettingsError
    from harness.toy import models
    from harness.toy.training import pick_device

    try:
        device = pick_device(args.device)
    except SettingsError as exc:
        parser.error(f"argument --device: {exc}")
    sizes, weights = args.size or [128], args.weights
    print(f"<!-- weights: {weights.resolve() if weights else f'committed ({models.DATA_DIR})'} -->", flush=True)
    print(HEADER, flush=True)
    blocks = [lambda size=size: oracle_rows(args.n_oracle, size) for size in sizes]
    blocks += [lambda: clip_rows(args.n_clip, device, weights)]
    blocks += [lambda size=size: generation_rows(args.n_gen, size=size, steps=args.steps, guidance=args.guidance,
                                                 scheduler=args.scheduler, device=device, data_dir=weights)
               for size in sizes]
    blocks += [lambda size=size: vae_rows(args.n_gen, size=size, device=device, data_dir=weights) for size in sizes]
    rows: list[Row] = []
    for block in blocks:
        t0 = time.time()
        for row in block():
            print(row.line(), flush=True)
            rows.append(row)
        print(f"<!-- {time.time() - t0:.0f} s -->", flush=True)
    status, lines = verdict(rows)
    print("\n" + "\n".join(lines), flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
