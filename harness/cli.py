"""The `harness` command line: a thin layer over the library.

Each command parses its options, calls one library function and formats the
result. Everything here is scriptable from Python without the CLI.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .expand import compile_template
from .expand.lint import CommaCheck
from .experiment import ExperimentError
from .grammar import GrammarError
from .wildcards import WildcardLibrary, default_search_path

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reproducible Stable Diffusion prompt studies.")


@app.callback()
def _root() -> None:
    """Reproducible Stable Diffusion prompt studies."""
    if os.environ.get("HARNESS_PLUGINS"):  # a plugin that cannot be imported is one line, before any work
        try:
            import harness.metrics  # noqa: F401
        except ImportError as exc:
            fail(f"error: {exc}")


class Fmt(str, Enum):
    text = "text"
    jsonl = "jsonl"
    csv = "csv"


_RUN_OUT_OF_SPACE = ("nothing is lost: images already finished are kept and a partly written one is removed (its "
                     "job stays pending). Free space (or raise the quota or file-size limit) and run the same "
                     "command again: it resumes where it stopped")


def fail(message: str, code: int = 2, *, out_of_space: str = _RUN_OUT_OF_SPACE) -> None:
    """Print one clean error and exit with `code`.

    Called while handling a system error (an OSError with an errno: disk full, quota, file too large,
    permissions) whose text is the message, it prints one line naming the path and the system's
    reason instead; for a full disk or quota it adds `out_of_space`: by default that finished images are
    kept and the run resumes."""
    import errno
    exc = sys.exc_info()[1]
    if isinstance(exc, OSError) and exc.errno is not None and message == str(exc):
        name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        where = f"{exc.filename}: " if exc.filename is not None else ""
        message = f"error: {where}{exc.strerror or exc} ({name})"
        if exc.errno in {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}:
            message += f"; {out_of_space}"
        elif exc.errno == errno.EEXIST and exc.filename is not None and not Path(exc.filename).is_dir():
            # a folder a report writes (thumbs/, plots/) is a file there; images/ and tables/ are checked when
            # the ledger opens
            message = (f"error: {exc.filename}: a file stands where this folder must be; move or rename it, "
                       "then run the command again")
    typer.echo(message, err=True)
    raise typer.Exit(code)


def check_grammars(grammars: list[Path]) -> list[Path]:
    """`--grammars` folders, each of which must exist (a typo would otherwise leave its wildcards unknown)."""
    for folder in grammars:
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            fail(f"--grammars {folder}: {what}; give a folder of wildcard .txt files")
    return grammars


def read_at_path(arg: str) -> tuple[str, Path]:
    """The text of the file an `@path` argument names, and its path; a missing path, a folder, a device and
    a file that cannot be read are each one clean error naming the path."""
    from .wildcards import read_text

    path = Path(arg[1:])
    try:
        if path.is_dir():
            fail(f"{arg}: {path} is a folder; expected a text file holding the template")
        if not path.exists():
            fail(f"template file not found: {path}")
        if not path.is_file():
            fail(f"{arg}: {path} is not a regular file (a device or a pipe); expected a text file holding the "
                 "template")
        return read_text(path).rstrip("\n"), path
    except OSError as exc:
        fail(f"{arg}: {path} cannot be read: {exc.strerror or exc}")


def load_template(template: str, grammars: list[Path]):
    """`template` is literal text or `@path`; returns a compiled Template."""
    check_grammars(grammars)
    origin, base = "<template>", None
    if template.startswith("@"):
        template, path = read_at_path(template)
        origin, base = str(path), path.parent
    library = WildcardLibrary(default_search_path(base, grammars))
    return compile_template(template, library=library, origin=origin)


@app.command()
def expand(
    template: str = typer.Argument(..., help="Template text, or @path to a file holding it."),
    count: bool = typer.Option(False, "--count", help="Print only the number of distinct prompts."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Stop after N prompts."),
    sample: Optional[int] = typer.Option(None, "--sample", min=0, help="Draw N prompts at random."),
    seed: int = typer.Option(0, "--seed", help="Prompt-sampling seed (separate from image seeds)."),
    with_replacement: bool = typer.Option(False, "--with-replacement", help="Let --sample repeat prompts."),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="text | jsonl | csv"),
    grammars: List[Path] = typer.Option([], "--grammars", help="Extra wildcard folder (repeatable)."),
) -> None:
    """Expand a prompt template into concrete prompts with their factors."""
    from .expand import TooFewPrompts

    ignored = [name for name, given in (("--limit", limit is not None), ("--sample", sample is not None),
                                        ("--with-replacement", with_replacement),
                                        ("--format", fmt is not Fmt.text)) if given]
    if count and ignored:
        fail(f"--count prints one number, the count of every distinct prompt, which {', '.join(ignored)} "
             f"would not change; drop {'them' if len(ignored) > 1 else 'it'}, or drop --count to list prompts")
    if with_replacement and sample is None:
        fail("--with-replacement lets --sample N draw a prompt more than once; add --sample N, or drop it")
    try:
        tpl = load_template(template, grammars)
        if count:
            n, exact = tpl.count_info()
            typer.echo(str(n) if exact else f"{n} (upper bound: parts of this template may spell one prompt two "
                                            "ways, and telling them apart would pass the counting limits)")
            return
        if sample is not None:
            variants = tpl.sample(sample, random.Random(seed), replace=with_replacement)
            if limit is not None:
                variants = variants[:limit]
        else:
            variants = tpl.expand(limit=limit)
        commas = CommaCheck()
        write_variants(commas.watch(variants, lambda v: v.prompt), fmt, tpl.factors)
        if commas.note():
            typer.echo(f"note: {commas.note()}", err=True)
    except GrammarError as e:
        fail(str(e))
    except TooFewPrompts as e:  # by type, not wording: every "too few distinct prompts" error gets the hint
        fail(f"error: {e}; sample fewer, or add --with-replacement")
    except ValueError as e:
        fail(f"error: {e}")


def write_variants(variants, fmt: Fmt, factors: list[str]) -> None:
    """Prompts as text, jsonl or csv. A csv cell shows a factor's level as the run's tables show it
    (`level_label`): an empty option is `(empty)` and a factor not on the prompt's path `—` (an option
    spelled like either mark is quoted), so the two read apart; jsonl keeps the values as they are."""
    out = sys.stdout
    if fmt is Fmt.csv:
        from .columns import level_label
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["prompt", *(f"f.{f}" for f in factors)])  # as the run's tables name them: never `prompt`
        for v in variants:
            w.writerow([v.prompt, *(level_label(v.factors.get(f)) for f in factors)])
        return
    multiline = 0
    for v in variants:
        if fmt is Fmt.jsonl:
            out.write(json.dumps(v.to_dict(), ensure_ascii=False) + "\n")
        else:
            out.write(v.prompt + "\n")
            multiline += "\n" in v.prompt
    if multiline:  # said after the prompts, so a pipe reading them still gets every one
        typer.echo(f"note: {multiline} prompt(s) hold a line break and span several lines above; "
                   "--format jsonl or csv keeps each prompt one record", err=True)


class PlanFmt(str, Enum):
    text = "text"
    jsonl = "jsonl"


def _given_device(value: Optional[str]) -> Optional[str]:
    """--device as written; an empty one is refused (it would quietly mean the experiment's own)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("empty; expected auto, cpu, cuda, cuda:N or mps (or leave --device out to take "
                                 "the experiment's device)")
    return value


DEVICE_OPTION = typer.Option(None, "--device", callback=_given_device, help="auto | cpu | cuda | cuda:N | mps")


MAX_SHARDS = 1_000_000


def _parse_shard(shard: Optional[str]) -> Optional[tuple[int, int]]:
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        fail(f"--shard {shard!r}: expected i/n, for example 0/4")
    if not 0 <= i < n:
        fail(f"--shard {shard!r}: expected 0 <= i < n")
    if n > MAX_SHARDS:
        fail(f"--shard {shard!r}: expected at most {MAX_SHARDS:,} shards (a shard of a plan split finer is empty)")
    return i, n


def interrupted(what: str = "what was finished is kept (images written and marked done, scores stored); run the "
                            "same command again to go on from there") -> None:
    """Ctrl-C (or SIGTERM) during a command: one line saying `what` became of its work, exit 130 (143),
    the shell's code for it. Called in the `except KeyboardInterrupt` that caught it."""
    from .entry import Terminated

    term = isinstance(sys.exc_info()[1], Terminated)
    fail(f"{'terminated (SIGTERM)' if term else 'interrupted'}: {what}", 143 if term else 130)


def _user_errors():
    """Errors a user can fix, shown as one clean message with exit code 2."""
    from .checkpoints import CheckpointError
    from .ledger import LedgerError
    from .core import OutOfMemory, SettingsError
    # OSError: disk full, quota, file too large, permissions; `fail` names the path and the reason
    return (ExperimentError, GrammarError, CheckpointError, LedgerError, SettingsError, OutOfMemory, OSError)


@app.command()
def plan(
    experiment: Path = typer.Argument(..., help="experiment .toml"),
    fmt: PlanFmt = typer.Option(PlanFmt.text, "--format", help="text | jsonl (one job per line)"),
    shard: Optional[str] = typer.Option(None, "--shard", help="Only the jobs of shard i/n."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder whose timings correct the estimate "
                                       "(default: reports/<name>)."),
) -> None:
    """Show the jobs an experiment makes: count, factors, batch groups, time estimate."""
    from .experiment import load_experiment
    from .ledger import Ledger, LedgerError
    from .plan import make_plan, shard as shard_jobs
    from .ledger.store import check_folder
    from .run import _folder_shard, check_folder_experiment, check_not_someone_elses, default_run_dir

    try:
        exp = load_experiment(experiment)
        p = make_plan(exp)
        made = groups = None
        if exp.stages:  # also refuses stages that would share images
            from .stages import planned_stages, shard_groups
            made = planned_stages(exp, list(p.jobs), p.checkpoints)
            groups = shard_groups(exp, made)
        run_dir = out or default_run_dir(exp)
        check_folder(run_dir)  # a folder `harness run` would refuse is refused here too
        check_not_someone_elses(run_dir, "run")
        if (run_dir / "ledger.sqlite").is_file():  # refused as `harness run` refuses it, not priced by its timings
            with contextlib.suppress(LedgerError, OSError), Ledger.open(run_dir, readonly=True) as ledger:
                check_folder_experiment(ledger, exp)  # (an unreadable ledger is noted with the estimates)
        # a shard's folder goes on with its shard, as `harness run` there does
        picked = (_parse_shard(shard) if shard is not None else
                  _folder_shard(run_dir, lambda m: typer.echo(f"note: {m}", err=True)))
        jobs = list(p.jobs) if picked is None else shard_jobs(p.jobs, *picked, by_variant=bool(exp.stages),
                                                             groups=groups)
        if exp.stages:
            made = made if picked is None else planned_stages(exp, jobs, p.checkpoints)
            counts = {stage.name: len(made[stage.name]) for stage in exp.stages}
    except _user_errors() as e:
        fail(str(e))
    if fmt is PlanFmt.jsonl:
        for job in jobs:
            sys.stdout.write(json.dumps(job.to_dict(), ensure_ascii=False) + "\n")
        return
    from .plan import group_jobs, plan_notes
    groups = group_jobs(jobs)
    typer.echo(f"experiment: {exp.name} ({exp.path})")
    typer.echo(f"jobs: {len(jobs)}")
    typer.echo(f"factors: {', '.join(p.factors) or '(none)'}")
    for name, ref in p.checkpoints.items():
        typer.echo(f"checkpoint {name}: {ref.kind} {ref.source} fingerprint {ref.fingerprint}")
    typer.echo(f"groups (jobs sharing pipeline calls): {len(groups)}")
    for gj in groups.values():
        j = gj[0]
        strength = f" strength={j.strength}" if j.mode == "img2img" else ""
        typer.echo(f"  {len(gj):6d}  {j.checkpoint} {j.mode}{strength} steps={j.steps} cfg={j.guidance} "
                   f"{j.scheduler} {j.width}x{j.height} dtype={j.dtype}")
    for note in plan_notes(p, jobs):
        typer.echo(f"note: {note}")
    progress, stale, made = _print_estimates(p, jobs, run_dir)
    main_made = bool(jobs) and {j.key for j in jobs} <= made  # a stage renamed or added after main was made
    for st in exp.stages:
        keep = f"top {st.top_k} per variant by {st.metric}" if st.top_k else "every image"
        seeds = f"seeds {list(st.seeds)}" if st.seeds is not None else "the parent's seed"
        planned, done = progress.get(f"stage:{st.name}", (0, 0))
        when = (f"planned in {run_dir}: {done} of its {planned} jobs done" if planned and not stale else
                f"planned again by the next run (the experiment changed since {run_dir} planned it; not in the "
                "estimate above)" if planned else
                f"planned by the next run from the {len(jobs)} done images of stage main (not in the estimate "
                "above)" if st.source == "main" and main_made else
                f"planned once stage {st.source} is done (not in the estimate above)")
        typer.echo(f"then stage {st.name}: img2img from stage {st.source} ({keep}), strengths "
                   f"{list(st.strengths)}, {seeds}: {counts[st.name]} jobs, {when}")


HISTORY_NOTE = ("its settings, prompt file or wildcard files, or of init images whose files now hold other pixels: "
                "earlier versions of experiment.toml (with a prompt file's text inline) are kept in history/, and "
                "running one again brings its images back, as putting an init image's earlier file back does")


def _print_estimates(p, jobs, run_dir: Path) -> tuple[dict[str, tuple[int, int]], bool, set[str]]:
    """Generation time of `jobs` on a CPU and a GPU by the table of step costs; where the run folder has
    timed finished images on a device, the table is scaled to them and the jobs not done yet are priced.
    Returns the run folder's (planned, done) jobs per plan part (`Ledger.part_progress`), {} without one,
    whether the folder's plan is stale (made by another version of the experiment or other main images), and
    the keys of the images done there."""
    from .ledger import Ledger, LedgerError
    from .plan import measured_scale, measured_seconds, scales_said
    from .run import edited_since

    timings, done, progress, stale = [], set(), {}, False
    if (run_dir / "ledger.sqlite").is_file():
        try:
            with Ledger.open(run_dir, readonly=True) as ledger:
                timings, done, progress = ledger.timings(), ledger.done_keys(), ledger.part_progress()
                stale = edited_since(ledger, p.experiment) or ledger.plan_keys("main") != set(p.keys)
        except (LedgerError, OSError) as exc:  # the plan stands without them
            typer.echo(f"note: the timings of {run_dir} cannot be read ({exc}); estimating from the table", err=True)
    for device in ("cpu", "cuda"):
        line = f"estimate on {device}: {_duration(p.estimate_seconds(device, jobs=jobs))} generating"
        measured = measured_seconds(p, jobs, timings, device)
        if measured is not None:
            seconds, n, own = measured
            scales = scales_said(p, own, measured_scale(p, timings, device)[0])
            left = [j for j in jobs if j.key not in done]
            line = (f"estimate on {device}: {_duration(seconds)} generating, timed by {n} finished images in "
                    f"{run_dir} ({scales} the table); {len(left)} not done: "
                    f"{_duration(measured_seconds(p, left, timings, device)[0])}")
        typer.echo(line)
    return progress, stale, done


def _duration(seconds: float) -> str:
    if 0 < seconds < 0.5:
        return "<1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@app.command()
def run(
    experiment: Path = typer.Argument(..., help="experiment .toml"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default reports/<name>)."),
    force: bool = typer.Option(False, "--force", help="Regenerate images that are already done."),
    exact: bool = typer.Option(False, "--exact", help="One image per pipeline call: bitwise repeatable."),
    device: Optional[str] = DEVICE_OPTION,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Override the batch size."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run only shard i/n of the plan (by key)."),
    executor: str = typer.Option("local", "--executor", help="local | ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a "
                                                                   "local one)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray worker actors (default 2)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", min=0.0,
                                                    help="GPUs per Ray worker (default 0)."),
) -> None:
    """Generate every image of an experiment into its run folder (resumable)."""
    from .run import run_experiment

    ray_options = {"--address": address, "--workers": workers, "--gpus-per-worker": gpus_per_worker}
    given = [name for name, value in ray_options.items() if value is not None]
    if executor == "local" and given:
        them = "them" if len(given) > 1 else "it"
        fail(f"{', '.join(given)}: {'these options need' if len(given) > 1 else 'this option needs'} --executor "
             f"ray (the local executor runs in this process and would ignore {them}); add --executor ray or "
             f"drop {them}")
    options = ({name[2:].replace("-", "_"): value for name, value in ray_options.items() if value is not None}
               if executor == "ray" else None)
    try:
        r = run_experiment(experiment, out=out, force=force, exact=exact or None, device=device,
                           batch_size=batch_size, shard=_parse_shard(shard), executor=executor,
                           executor_options=options)
    except KeyboardInterrupt:
        interrupted()
    except _user_errors() as e:
        fail(str(e))
    typer.echo(f"run folder: {r.run_dir}")
    typer.echo(f"jobs: {r.planned} planned, {r.already_done} already done, {r.generated} generated"
               + (f" ({r.images_per_s:.2f} images/s on {r.device})" if r.generated else ""))
    if r.unhealthy_in_folder:
        typer.echo(f"unhealthy images: {r.unhealthy_in_folder} of the {r.finished_in_folder} finished "
                   f"({r.unhealthy} made by this run; black, uniform, NaN or failing the health metric; excluded "
                   "from statistics)")
    if r.unplanned:
        typer.echo(f"kept but left out of reports: {r.unplanned} images made for an earlier version of the "
                   f"experiment, {HISTORY_NOTE}")
    for name, (earlier, now, n) in r.changed_weights.items():
        typer.echo(f"note: the weights of checkpoint {name} changed since {n} of those images were made "
                   f"(fingerprint {', '.join(earlier)}, now {now}): its images are made anew from the new weights")
    for m in r.oom_events:
        typer.echo(f"note: {m}")
    _print_metric_summaries(r.metrics, this_pass=False)  # a run scores as it generates: no pass to count


def _print_metric_summaries(summaries, *, this_pass: bool = True) -> int:
    """One line per metric (with `this_pass`, how many this eval scored); returns how many images some
    metric could not score (not stored)."""
    def why(reasons) -> str:
        return "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))

    for s in summaries:
        nan = f", {s.nan} NaN ({why(s.reasons)})" if s.nan else ""
        if s.not_applicable:
            nan += f", {s.not_applicable} not applicable ({why(s.not_applicable_reasons)})"
        typer.echo(f"{s.metric}: {s.scored + s.skipped} images scored"
                   + (f" ({s.scored} in this pass)" if this_pass else "") + f"{nan}; "
                   + (f"mean {s.mean:.4g}" if s.mean == s.mean else "no mean: no score is a number"))
        if s.unscored:
            typer.echo(f"  not scored: {s.unscored} images ({why(s.unscored_reasons)}); nothing was stored for "
                       "them, so the next harness eval tries again", err=True)
    return sum(s.unscored for s in summaries)


@app.command()
def merge(
    sources: List[Path] = typer.Argument(..., help="Run folders to merge (e.g. the shards of one plan)."),
    out: Path = typer.Option(..., "--out", help="The merged run folder (created if missing)."),
) -> None:
    """Merge run folders (shards from `harness run --shard i/n`) into one run."""
    from .ledger import LedgerError
    from .run import merge_runs

    try:
        t = merge_runs(out, sources)
    except (FileNotFoundError, ValueError, LedgerError) as e:
        fail(f"error: {e}")
    except OSError as e:  # a full disk, permissions: each image is copied whole before its row is recorded
        fail(f"error: {e}; whatever was merged before this error is kept and sound: fix the cause and merge "
             "again, it goes on")
    typer.echo(f"{out}: {t['done']} done jobs ({t['added']} added, {t['already']} already there, "
               f"{t['scores']} scores, {t['bad']} damaged or changed images skipped)")
    if t["missing"]:
        typer.echo(f"not made yet: {t['missing']} images the merged plans ask for (a shard unfinished or not merged)")


# Commands defined in other modules register themselves on `app`.
from . import cli_results, cli_search, cli_tools  # noqa: E402,F401


def main() -> None:
    """The `harness` command. A system error no command caught (stdout on a full disk, a closed pipe)
    is one line naming the reason, not a traceback."""
    try:
        app(prog_name="harness")
    except OSError as exc:
        import errno
        _quiet_stdout()
        name = errno.errorcode.get(exc.errno, "an OS error") if exc.errno is not None else "an OS error"
        where = exc.filename if exc.filename is not None else "writing the output"
        print(f"error: {where}: {exc.strerror or exc} ({name})", file=sys.stderr)
        sys.exit(1)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what a full or closed stdout could
    not take does not print a second error."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
