"""Generate the images of a plan into a run folder, resumably.

The order of work: checkpoints switch as few times as possible (each loaded
once), and within a checkpoint every group of jobs that can share a pipeline
call (same mode, strength, steps, guidance, scheduler, size) is batched, with
different prompts and seeds in one call. PNGs are encoded and written by a
thread pool while the next batch generates; a batch's ledger rows are marked
done only after all of its images are durably on disk, so a kill at any moment
loses at most the batches in flight.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .core import Job, canonical_json
from .experiment import Experiment, load_experiment
from .ledger import Done, Ledger
from .plan import Plan, group_jobs, make_plan, shard as shard_jobs
from .provenance import a1111_parameters, provenance_record, write_png_atomic

PNG_LEVEL = 1  # zlib level: ~2x faster than Pillow's default at a few % more bytes


@dataclass
class RunResult:
    run_dir: Path
    planned: int
    already_done: int
    generated: int = 0
    unhealthy: int = 0
    seconds: float = 0.0
    oom_events: list[str] = field(default_factory=list)
    device: str = ""
    metrics: list = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


def default_run_dir(exp: Experiment) -> Path:
    return Path("reports") / exp.name


def prepare_run(exp: Experiment, plan: Plan, run_dir: Path, *, jobs: list[Job] | None = None,
                force: bool = False) -> tuple[Ledger, list[Job]]:
    """Open the ledger, reconcile it with the folder, record the plan; return the jobs still to make."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(run_dir)
    ledger.reconcile()
    jobs = list(plan.jobs if jobs is None else jobs)
    shutil.copyfile(exp.path, run_dir / "experiment.toml")
    ledger.set_meta("experiment", canonical_json(exp.raw))
    ledger.set_meta("experiment_path", str(exp.path))
    ledger.set_meta("factors", json.dumps(list(plan.factors)))
    ledger.drop_pending({j.key for j in jobs})
    ledger.add_jobs(jobs)
    if force:
        ledger.reset([j.key for j in jobs if ledger.status_of(j.key) == "done"])
    done = ledger.done_keys()
    return ledger, [j for j in jobs if j.key not in done]


def run_experiment(path: Path | str, *, out: Path | str | None = None, force: bool = False,
                   exact: bool | None = None, device: str | None = None, batch_size: int | None = None,
                   shard: tuple[int, int] | None = None, log: Callable[[str], None] | None = None,
                   progress: bool | None = None, evaluate_after: bool = True) -> RunResult:
    """Plan, generate what is not done yet, then score with the experiment's metrics."""
    exp = load_experiment(path)
    plan = make_plan(exp)
    jobs = list(plan.jobs) if shard is None else shard_jobs(plan.jobs, *shard)
    run_dir = Path(out) if out else default_run_dir(exp)
    ledger, pending = prepare_run(exp, plan, run_dir, jobs=jobs, force=force)
    result = RunResult(run_dir, len(jobs), len(jobs) - len(pending))
    try:
        options = dict(exact=exp.exact if exact is None else exact, device=device or exp.device,
                       batch_size=batch_size, log=log or _stderr, progress=progress)
        generate_jobs(exp, plan, ledger, pending, result, **options)
        if exp.metrics and evaluate_after:
            from .evaluate import evaluate
            result.metrics = evaluate(ledger, exp.metrics, log=log or _stderr)
        for stage in exp.stages:
            run_stage(exp, stage, plan, ledger, result, shard=shard, evaluate_after=evaluate_after, **options)
    finally:
        ledger.close()
    return result


def run_stage(exp: Experiment, stage, plan: Plan, ledger: Ledger, result: RunResult, *, shard=None,
              evaluate_after: bool = True, **options) -> None:
    """Generate one later stage from its source stage's outputs (resumable like the main stage)."""
    from .evaluate import evaluate
    from .stages import stage_jobs

    log = options.get("log") or _stderr
    if stage.metric:  # top-k selection needs the source images scored
        evaluate(ledger, [stage.metric], log=log)
    jobs = stage_jobs(exp, stage, ledger, plan.checkpoints)
    if shard is not None:
        jobs = shard_jobs(jobs, *shard)
    ledger.add_jobs(jobs)
    done = ledger.done_keys()
    pending = [j for j in jobs if j.key not in done]
    result.planned += len(jobs)
    result.already_done += len(jobs) - len(pending)
    log(f"stage {stage.name}: {len(jobs)} jobs from stage {stage.source}, {len(pending)} to generate")
    generate_jobs(exp, plan, ledger, pending, result, **options)
    if exp.metrics and evaluate_after:
        result.metrics = evaluate(ledger, exp.metrics, log=log)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Tuning:
    """Knobs that change speed, never pixels (the benchmark turns each off to measure it)."""

    png_level: int = PNG_LEVEL
    writers: int = 4                  # PNG encode/write threads; 0 = in the generation thread
    speedups: tuple[str, ...] = ()    # opt-in: "channels_last", "compile" (torch.compile of the UNet)
    on_load: Callable | None = None   # called with every loaded pipeline (timing hooks)


SPEEDUPS = ("channels_last", "compile")


def _loader(tuning: Tuning):
    from .checkpoints import load_pipeline

    def load(ref, mode, **kw):
        pipe = load_pipeline(ref, mode, **kw)
        if "channels_last" in tuning.speedups:
            import torch
            pipe.unet.to(memory_format=torch.channels_last)
        if "compile" in tuning.speedups:
            import torch
            pipe.unet = torch.compile(pipe.unet)
        if tuning.on_load is not None:
            tuning.on_load(pipe)
        return pipe
    return load


def _write_now(path, pixels, **kw) -> Future:
    f: Future = Future()
    try:
        f.set_result(write_png_atomic(path, pixels, **kw))
    except BaseException as exc:  # noqa: BLE001 - surfaced by commit() before marking done
        f.set_exception(exc)
    return f


def generate_jobs(exp: Experiment, plan: Plan, ledger: Ledger, pending: list[Job], result: RunResult, *,
                  exact: bool, device: str, batch_size: int | None, log: Callable[[str], None],
                  progress: bool | None = None, tuning: Tuning | None = None) -> None:
    if not pending:
        return
    from . import generate as gen  # torch is imported only when there is work
    from .checkpoints import SAMPLER_NAMES
    from .metrics.health import check_array

    tuning = tuning or Tuning(speedups=exp.speedups)
    cache = gen.PipelineCache(device, memory=exp.memory, loader=_loader(tuning))
    result.device = cache.device
    inits: dict = {}
    host = socket.gethostname()
    writer = ThreadPoolExecutor(max_workers=max(1, tuning.writers))
    submit = writer.submit if tuning.writers > 0 else _write_now
    inflight: deque[tuple[list[Done], list[Future]]] = deque()
    bar = _Progress(len(pending), enabled=progress, log=log)
    t0 = time.perf_counter()
    batch_no = 0

    def commit(block: bool) -> None:
        while inflight and (block or all(f.done() for f in inflight[0][1])):
            rows, futures = inflight.popleft()
            for f in futures:
                f.result()  # a failed write raises here, before the row is marked done
            ledger.mark_done_many(rows)
            result.generated += len(rows)
            bar.advance(len(rows))

    try:
        for _, jobs in group_jobs(pending).items():
            first = jobs[0]
            ref = plan.checkpoints[first.checkpoint]
            pipe = cache.get(ref, first.mode, first.scheduler, dtype=first.dtype)
            dtype_used = gen.dtype_name(gen.pick_dtype(first.dtype, cache.device))
            size = 1 if exact else batch_size or (exp.batch_size if exp.batch_size != "auto" else
                                                   gen.auto_batch_size(cache.device, first.width, first.height))

            def call(chunk: list[Job]):
                images = None
                if first.mode == "img2img":
                    images = [_init(inits, gen, j) for j in chunk]
                return gen.generate_batch(pipe, chunk, device=cache.device, init_images=images,
                                          embeds_cache=cache.embeds, exact=exact)

            started = time.perf_counter()
            for chunk in gen.run_batched(call, jobs, size, on_oom=lambda m: (result.oom_events.append(m), log(m))):
                now = time.perf_counter()
                per_image = (now - started) / len(chunk.items)
                started = now
                batch_no += 1
                rows, futures = [], []
                for slot, (job, pixels) in enumerate(zip(chunk.items, chunk.results)):
                    ok, flags = check_array(pixels)
                    result.unhealthy += not ok
                    if job.watermark != "none":
                        from .metrics.watermark import embed
                        pixels = embed(pixels, job.watermark)
                    extra = dict(batch_size=chunk.batch_size, slot=slot, device=cache.device, dtype=dtype_used,
                                 memory=list(cache.memory_applied), safety_checker="off", host=host)
                    futures.append(submit(
                        write_png_atomic, ledger.image_path(job.key), pixels,
                        parameters=a1111_parameters(job, sampler=SAMPLER_NAMES.get(job.scheduler, job.scheduler),
                                                    model_name=job.checkpoint,
                                                    model_hash_override=getattr(ref, "model_hash", "") or None),
                        provenance=provenance_record(job, **extra), compress_level=tuning.png_level))
                    rows.append(Done(job.key, batch_id=f"{os.getpid()}-{batch_no}", batch_size=chunk.batch_size,
                                     slot=slot, seconds=per_image, device=cache.device, dtype=dtype_used,
                                     memory=list(cache.memory_applied), health={"ok": ok, "flags": flags},
                                     host=host))
                inflight.append((rows, futures))
                commit(block=False)
        commit(block=True)
    finally:
        try:
            commit(block=True)
        finally:
            writer.shutdown(wait=True)
            cache.clear()
            result.seconds = time.perf_counter() - t0
            bar.close()


def merge_runs(out: Path | str, sources: Iterable[Path | str], *, log: Callable[[str], None] | None = None) -> dict:
    """Merge shard run folders into one run: done jobs, images (verified, atomic) and scores.
    The experiment copy and run metadata come from the first source that has them."""
    log = log or _stderr
    out = Path(out)
    totals = {"added": 0, "already": 0, "scores": 0, "bad": 0}
    with Ledger.open(out) as ledger:
        for src in sources:
            src = Path(src)
            if not (src / "ledger.sqlite").is_file():
                raise FileNotFoundError(f"{src}: not a run folder (no ledger.sqlite)")
            if not (out / "experiment.toml").exists() and (src / "experiment.toml").exists():
                shutil.copyfile(src / "experiment.toml", out / "experiment.toml")
                with Ledger.open(src, readonly=True) as other:
                    for name in ("experiment", "experiment_path", "factors"):
                        value = other.get_meta(name)
                        if value is not None:
                            ledger.set_meta(name, value)
            m = ledger.merge_from(src)
            totals["added"] += m.jobs_added
            totals["already"] += m.jobs_already_done
            totals["scores"] += m.scores_added
            totals["bad"] += len(m.bad_images)
            log(f"{src}: {m.jobs_added} jobs added, {m.jobs_already_done} already present, "
                f"{m.scores_added} scores, {len(m.bad_images)} damaged images skipped")
        totals["done"] = ledger.count("done")
    return totals


def _init(cache: dict, gen, job: Job):
    key = (job.init_image, job.width, job.height)
    if key not in cache:
        cache[key] = gen.load_init_image(job.init_image, job.width, job.height)
    return cache[key]


class _Progress:
    """A rich progress bar on a terminal; plain lines otherwise."""

    def __init__(self, total: int, *, enabled: bool | None, log: Callable[[str], None]):
        self.total, self.done, self.log = total, 0, log
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._bar = None
        if self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn)
            self._bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("gen", total=total, rate="")
            self._bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{rate:.2f} img/s")
        elif time.perf_counter() - self._last > 2 or self.done == self.total:
            self._last = time.perf_counter()
            eta = (self.total - self.done) / rate if rate else float("nan")
            self.log(f"generated {self.done}/{self.total} ({rate:.2f} img/s, eta {eta:.0f}s)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
