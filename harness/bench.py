"""Throughput: the harness runner against the loop a user would write.

`harness bench` (or `python -m harness.bench`) runs one fixed sweep two ways in
the same process and prints images/s for each, their ratio, the share of wall
time outside the denoising loop, peak memory and, on a GPU, achieved TFLOP/s
in the denoising loop against the GPU's dense peak:

  naive    one diffusers pipeline call per image, default settings (PIL
           output, Pillow's default PNG compression, saved in the loop)
  harness  the runner: mixed-prompt/mixed-seed batches with cached prompt
           embeddings, one call per strength group, uint8 on the device with one
           transfer per batch, PNG level 1 written by a thread pool, SQLite ledger

`--ablate` also runs the harness with one optimisation turned off at a time.
The last line is `ratio: X.XX` (harness images/s over naive images/s).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .measure import (
    DenoiseTimer,
    card_peak,
    peak_memory,
    percent_of_peak,
    reset_peak_memory,
    unet_flops,
)

SCORE_METRIC = "clip_score:model=tiny,cache=none"  # the scoring rows: batched CLIP scoring of every image


COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")  # one prompt each


@dataclass(frozen=True)
class Sweep:
    model: str = "tiny"
    size: int = 128
    steps: int = 10
    prompts: int = 8
    seeds: int = 4
    strengths: tuple[float, ...] = (0.5,)
    guidance: float = 7.5

    def experiment_toml(self, init: Path) -> str:
        words = COLOURS[: self.prompts]
        img2img = f'init_images = "{init.name}"\nstrengths = {list(self.strengths)}\n' if self.strengths else ""
        modes = '["txt2img", "img2img"]' if self.strengths else '"txt2img"'
        return f"""
name = "bench"
prompt = "a {{{'|'.join(words)}}} house on a hill, highly detailed"
negative_prompt = "blurry"
seeds = {{ count = {self.seeds} }}
checkpoints = ["{self.model}"]
mode = {modes}
{img2img}scheduler = "ddim"
steps = {self.steps}
guidance = {self.guidance}
width = {self.size}
height = {self.size}
"""


def classic_attention(pipe) -> None:
    """Swap diffusers' default scaled-dot-product attention for the plain matmul version."""
    from diffusers.models.attention_processor import AttnProcessor
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())


def naive_loop(exp, plan, out: Path, device: str, dtype, timer: DenoiseTimer) -> tuple[float, int]:
    """What a user writes: one pipeline call per image, PIL output, default PNG save; each init image loaded
    once before the loop (as the harness caches it). (Seconds, images made)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from .images import load_init_image
    from .pipelines import load_pipeline

    ref = plan.checkpoints[exp.checkpoints[0]]
    t0 = time.perf_counter()
    pipe = load_pipeline(ref, "txt2img", device=device, dtype=dtype, scheduler=exp.scheduler)
    assert isinstance(pipe, StableDiffusionPipeline)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)  # as the txt2img pipeline's: neither loop prints per call
    timer.attach(pipe)
    out.mkdir(parents=True, exist_ok=True)
    inits = {}  # each init image loaded once, before the loop, as a user would (the harness caches it too)
    for j in plan.jobs:
        if j.mode != "txt2img" and (j.init_image, j.width, j.height) not in inits:
            inits[j.init_image, j.width, j.height] = load_init_image(j.init_image, j.width, j.height)
    made = 0
    for n, job in enumerate(plan.jobs):
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        common = dict(prompt=job.prompt, negative_prompt=job.negative_prompt, num_inference_steps=job.steps,
                      guidance_scale=job.guidance, generator=generator)
        if job.mode == "txt2img":
            t = time.perf_counter()
            image = pipe(height=job.height, width=job.width, **common).images[0]
        else:
            t = time.perf_counter()
            image = img2img(image=inits[job.init_image, job.width, job.height], strength=job.strength,
                            **common).images[0]
        timer.timings["spans"].append((t, time.perf_counter()))
        image.save(out / f"{n}.png")
        made += 1
    return time.perf_counter() - t0, made


def cpu_load_note(load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other processes keep the CPU busy (1-minute load average of half a core or more
    before anything runs): the two paths use their threads differently (the naive loop torch's default
    threads, the harness one thread per stream), so a load that comes and goes moves the ratio far more than
    the work does. None on a quiet machine, or where the load cannot be read."""
    try:
        load = os.getloadavg()[0] if load is None else load
    except OSError:
        return None
    cores = cores or os.cpu_count() or 1
    if load < 0.5:
        return None
    return (f"note: the CPU is busy before the benchmark starts (load average {load:.2f} over the last minute, "
            f"{cores} cores): other processes take time from both paths unevenly, so the ratio may be far off; "
            "measure on a quiet machine, or with --repeat N to see the spread")


def harness_run(exp, plan, run_dir: Path, device: str, timer: DenoiseTimer, tuning=None, batch_size=None,
                exact: bool = False, metrics: tuple[str, ...] = (), background: bool = True) -> tuple[float, int]:
    """The runner on `plan`; with `metrics`, scored in the background as batches finish (as `harness run`
    does) or, with background=False, in one pass after generation. (Seconds, images generated: fewer than
    the plan's where `run_dir`'s ledger already held some)."""
    from .evaluate import BackgroundScorer, evaluate
    from .run import RunResult, generate_jobs, prepare_run
    from .worker import Tuning

    tuning = tuning or Tuning(speedups=exp.speedups, streams=exp.streams)
    extra = tuning.on_load

    def on_load(pipe):
        if extra is not None:
            extra(pipe)
        timer.attach(pipe)

    tuning = replace(tuning, on_load=on_load, timings=timer.timings)
    t0 = time.perf_counter()
    ledger, pending = prepare_run(exp, plan, run_dir)
    try:
        result = RunResult(run_dir, len(plan.jobs), 0)
        scorer = BackgroundScorer(ledger, metrics) if metrics and background else None
        try:
            generate_jobs(exp, plan, ledger, pending, result, exact=exact, device=device, batch_size=batch_size,
                          log=lambda m: None, progress=False, tuning=tuning,
                          on_done=scorer.submit if scorer else None)
        finally:
            if scorer is not None:
                scorer.close()
        if metrics:
            evaluate(ledger, metrics, log=lambda m: None)  # after background scoring: nothing left to do
    finally:
        ledger.close()
    return time.perf_counter() - t0, result.generated


@dataclass
class Figures:
    name: str
    images: int  # made in this row (its images/s counts only those)
    seconds: float
    denoise: float
    pipeline: float
    unet_calls: int
    latents: int
    memory: str

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def outside(self) -> float:
        """Share of wall time outside the denoising loop (UNet calls)."""
        return max(0.0, 1 - self.denoise / self.seconds)

    @property
    def outside_pipeline(self) -> float:
        """Share of wall time outside pipeline calls: loading, encoding, saving, bookkeeping."""
        return max(0.0, 1 - self.pipeline / self.seconds)


def tflops_line(f: Figures, flops: float, peak: float, matmul: float) -> str:
    """A row's TFLOP/s in the denoising loop (`flops` per latent), as a share of the card's spec `peak` (left
    out where that is NaN: no fp32 peak is listed) and of the measured matrix-product rate `matmul`."""
    tflops = flops * f.latents / f.denoise / 1e12
    shares = [percent_of_peak(tflops, peak), f"{tflops / matmul:.1%} of the measured matrix-product rate"]
    return (f"{f.name:<28} {tflops:8.1f} TFLOP/s in the denoising loop ({', '.join(x for x in shares if x)}; "
            f"{f.latents} latent evaluations)")


ABLATIONS = ("batching", "png", "sdpa", "embeds", "uint8", "channels_last", "fuse_qkv", "streams", "score",
             "compile", "cudagraphs", "schedule")


def not_applicable(key: str, device: str, base=None, batch_size: int | None = None) -> str | None:
    """Why the `--ablate` row(s) of `key` are left out on `device` (or, given the harness row's `base`
    tuning and batch size, where they would measure the harness row itself), or None where they apply."""
    from .worker import resolve_streams

    kind = device.split(":")[0]
    if key in ("channels_last", "fuse_qkv") and base is not None and key in base.speedups:
        return f"--speedups has {key} on in the harness row already, so '+ {key}' would be that row"
    if key == "streams" and kind != "cuda" and base is not None and resolve_streams(base.streams, device) == 1:
        return "the harness row generates with one stream already (--streams 1, or one core)"
    if key == "batching" and batch_size == 1:
        return "--batch-size 1: the harness row makes one image per call already"
    if key == "uint8" and kind == "cpu":
        return ("the images are already on the host, so 'uint8 on the host' would run the harness row's "
                "own code (the copy to the host is a no-op on a CPU tensor)")
    if key == "streams" and kind == "cuda":
        return "CUDA always generates with one stream, so 'one stream' would be the harness row itself"
    if key == "compile" and kind != "cuda":
        return ("torch.compile is measured on CUDA only (on a CPU it took 100 s to compile the tiny UNet "
                "and then ran slower than eager)")
    if key in ("cudagraphs", "schedule") and kind != "cuda":
        return ("CUDA graphs need a CUDA device" if key == "cudagraphs" else
                "off CUDA the timesteps are on the host already, so 'timesteps on the card' would be the harness row")
    return None


def ablation_variants(which, device: str, base, notes: list[str] | None = None,
                      batch_size: int | None = None) -> list[tuple[str, dict]]:
    """(row name, harness_run keywords) for `--ablate`: every row if `which` is True or "all", else the
    rows whose key (`ABLATIONS`) is in `which` (a comma list, each key once); rows that do not apply to
    `device`, or would be the harness row itself (its `base` tuning, `batch_size`), are left out, and for a
    key named explicitly `notes` (when given) gets a line saying why."""
    if not which:
        return []
    every = which in (True, "all")
    keys = list(ABLATIONS) if every else [k.strip() for k in str(which).split(",") if k.strip()]
    unknown = [k for k in keys if k not in ABLATIONS]
    if unknown or not keys:
        raise ValueError(f"--ablate {which!r}: expected 'all' or a comma list of {', '.join(ABLATIONS)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    repeated = [k for k in dict.fromkeys(keys) if keys.count(k) > 1]
    if repeated:
        raise ValueError(f"--ablate {which!r}: {', '.join(repeated)} named more than once; each row is measured "
                         "once, so name each key once")
    if notes is not None and not every:
        notes.extend(f"--ablate {k}: left out on {device}: {why}" for k in keys
                     if (why := not_applicable(k, device, base, batch_size)) is not None)

    def plus(*speedups: str):  # the harness row's own speedups (--speedups) and these
        return replace(base, speedups=tuple(dict.fromkeys((*base.speedups, *speedups))))

    rows = {
        "batching": [("harness, no batching", dict(exact=True))],
        "png": [("harness, PNG sync level 6", dict(tuning=replace(base, writers=0, png_level=6))),
                ("harness, PNG sync level 1", dict(tuning=replace(base, writers=0)))],
        # the classic processor reads the unfused projections: with fuse_qkv the row loses both
        "sdpa": [("harness, classic attention (no SDPA" + (", QKV unfused)" if "fuse_qkv" in base.speedups else ")"),
                  dict(tuning=replace(base, on_load=classic_attention)))],
        "embeds": [("harness, no prompt-embedding cache", dict(tuning=replace(base, embeds_cache=False)))],
        "uint8": [("harness, uint8 on the host", dict(tuning=replace(base, device_uint8=False)))],
        "channels_last": [("harness + channels_last", dict(tuning=plus("channels_last")))],
        "fuse_qkv": [("harness + fused QKV", dict(tuning=plus("fuse_qkv")))],
        "streams": [("harness, one stream", dict(tuning=replace(base, streams=1)))],
        "score": [("harness + CLIP score, background", dict(metrics=(SCORE_METRIC,))),
                  ("harness + CLIP score, after", dict(metrics=(SCORE_METRIC,), background=False))],
        # Compiling takes most of a short sweep's time: the first run pays for it, the second (a fresh
        # pipeline, the compiler's caches warm) shows the compiled speed.
        "compile": [
            (f"harness + {label} {run}", dict(tuning=plus(*speedups)))
            for label, speedups in (("torch.compile", ("compile",)),
                                    ("channels_last + fused QKV + torch.compile",
                                     ("channels_last", "fuse_qkv", "compile")))
            for run in ("(1st run, compiling)", "(2nd run)")],
        "cudagraphs": [(f"harness + channels_last + fused QKV + torch.compile + CUDA graphs {run}",
                        dict(tuning=plus("channels_last", "fuse_qkv", "cudagraphs")))
                       for run in ("(1st run, compiling)", "(2nd run)")],
        "schedule": [("harness, timesteps on the card", dict(tuning=replace(base, host_schedule=False)))],
    }
    return [row for key in keys if not_applicable(key, device, base, batch_size) is None for row in rows[key]]


def run_bench(sweep: Sweep, *, device: str = "auto", dtype: str = "auto", ablate: bool | str = False,
              speedups: tuple[str, ...] = (), batch_size: int | None = None, keep: Path | None = None,
              streams: int | str = "auto", repeat: int = 1,
              out=print) -> dict:
    from PIL import Image

    from .core import SettingsError
    from .devices import dtype_name, pick_device, pick_dtype
    from .experiment import load_experiment
    from .plan import make_plan
    from .worker import Tuning

    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    if "cudagraphs" in speedups and not device.startswith("cuda"):
        raise SettingsError(f"--speedups cudagraphs replays CUDA graphs, so it needs a CUDA device; the device is "
                            f"{device}")
    work = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    try:
        Image.radial_gradient("L").convert("RGB").resize((sweep.size, sweep.size)).save(work / "init.png")
        text = sweep.experiment_toml(work / "init.png") \
            + (f'dtype = "{dtype_name(torch_dtype)}"\n' if dtype != "auto" else "") \
            + (f"speedups = {list(speedups)}\n" if speedups else "") \
            + (f"streams = {streams}\n" if streams != "auto" else "")
        (work / "bench.toml").write_text(text)
        exp = load_experiment(work / "bench.toml")
        plan = make_plan(exp)
        n = len(plan.jobs)
        notes: list[str] = []
        variants = ablation_variants(ablate, device, Tuning(speedups=exp.speedups, streams=exp.streams), notes,
                                     batch_size)
        modes = f"txt2img + img2img at strengths {list(sweep.strengths)}" if sweep.strengths else "txt2img"
        out(f"sweep: {n} images ({sweep.model}, {sweep.size}x{sweep.size}, {sweep.steps} steps, "
            f"{sweep.prompts} prompts x {sweep.seeds} seeds, {modes}), device {device}, {dtype_name(torch_dtype)}")
        for note in notes:
            out(note)
        if device == "cpu" and (busy := cpu_load_note()):
            out(busy)

        # Warm-up: load once so both paths find weights in the page cache and kernels initialised. A compiled
        # harness row warms on the whole sweep, every batch shape: its timed run then compiles its fresh UNet
        # from the compiler's warm caches, as the `--ablate compile` rows' second runs do.
        compiled = bool({"compile", "cudagraphs"} & set(exp.speedups))
        if compiled:
            out("warm-up: the whole sweep through the harness once (--speedups compiles), so the timed harness "
                "rows do not count compiling from cold")
        harness_run(exp, plan if compiled else replace(plan, jobs=plan.jobs[:1]), work / "warm", device,
                    DenoiseTimer(), batch_size=batch_size)
        if any(kw.get("metrics") for _, kw in variants):  # the scorer's first load and call too, so neither
            harness_run(exp, replace(plan, jobs=plan.jobs[:1]), work / "warm-score", device,  # scoring row pays it
                        DenoiseTimer(), batch_size=batch_size, metrics=(SCORE_METRIC,), background=False)

        rows: list[Figures] = []

        def measure(name, fn):
            timer = DenoiseTimer()
            fresh = reset_peak_memory(device)
            seconds, made = fn(timer)
            if made != n:  # images/s is the images this row made: a row that found them made measured nothing
                raise RuntimeError(f"bench row {name!r} generated {made} of the sweep's {n} images (its folder "
                                   "already held the others?): its images/s would be wrong; each row needs a "
                                   "folder of its own")
            rows.append(Figures(name, made, seconds, timer.seconds, timer.pipeline, timer.calls, timer.latents,
                                peak_memory(device, fresh)))
            f = rows[-1]
            out(f"{name:<28} {f.rate:8.3f} images/s  {f.seconds:7.1f} s  outside pipeline {f.outside_pipeline:6.1%}"
                f"  outside denoising {f.outside:6.1%}  UNet calls {f.unet_calls:5d}  peak {f.memory}")
            return f

        naive = measure("naive loop", lambda t: naive_loop(exp, plan, work / "naive", device, torch_dtype, t))
        best = measure("harness", lambda t: harness_run(exp, plan, work / "harness", device, t,
                                                        batch_size=batch_size))
        runs = ["harness"]
        rounds = [(naive, best)]
        for r in range(2, repeat + 1):  # the paths alternate, so a load that comes and goes falls on both
            runs.append(f"harness-{r}")
            rounds.append((
                measure(f"naive loop, round {r}",
                        lambda t, r=r: naive_loop(exp, plan, work / f"naive-{r}", device, torch_dtype, t)),
                measure(f"harness, round {r}", lambda t, r=r: harness_run(exp, plan, work / f"harness-{r}", device,
                                                                         t, batch_size=batch_size))))
        ratios = [h.rate / nv.rate for nv, h in rounds]
        ratio = statistics.median(ratios)
        if repeat > 1:
            out(f"rounds: {repeat}; ratio per round {', '.join(f'{x:.2f}' for x in ratios)}; median {ratio:.2f}")
        for name, kw in variants:
            folder = "".join(c if c.isalnum() else "_" for c in name)
            runs.append(folder)
            measure(name, lambda t, kw=kw, folder=folder: harness_run(
                exp, plan, work / folder, device, t, batch_size=batch_size, **kw))
        figures = {"images": n, "naive_images_per_s": statistics.median(nv.rate for nv, _ in rounds),
                   "harness_images_per_s": statistics.median(h.rate for _, h in rounds),
                   "ratio": ratio, "ratios": ratios, "harness_outside_share": best.outside,
                   "harness_outside_pipeline": best.outside_pipeline,
                   "naive_outside_share": naive.outside, "rows": rows, "work": work}
        if device.startswith("cuda"):
            from .pipelines import load_pipeline
            pipe = load_pipeline(plan.checkpoints[exp.checkpoints[0]], "txt2img", device=device, dtype=torch_dtype)
            flops = unet_flops(pipe.unet, sweep.size, device)
            peak, matmul = card_peak(device, torch_dtype, out)
            for f in rows:
                out(tflops_line(f, flops, peak, matmul))
            figures["matmul_tflops"] = matmul
            figures["unet_tflop_per_latent"] = flops / 1e12
        figures["max_diff"] = compare_images(work, plan, out, tuple(runs), dtype_name(torch_dtype))
        figures["images_agree"] = figures["max_diff"] <= TOLERANCE[dtype_name(torch_dtype)]
        if keep is not None:
            shutil.copytree(work, keep, dirs_exist_ok=True)
        out(f"ratio: {ratio:.2f}")
        return figures
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


# Largest per-channel difference allowed between a harness image and the naive loop's, by dtype:
# batching changes which kernels run (summation order), and so does a CPU stream's one core; half
# precision rounds those differences into more levels (3 were seen on SD1.5-sized fp16 on an H100; 10
# in bf16 img2img on the tiny model on a CPU, whose 8-bit mantissa the strength's noise then carries).
TOLERANCE = {"fp32": 1, "fp16": 4, "bf16": 16}


def compare_images(work: Path, plan, out=print, runs: tuple[str, ...] = ("harness",), dtype: str = "fp32") -> int:
    """Largest per-channel difference between the naive images and those of each harness run folder;
    runs beyond the dtype's tolerance are named."""
    import numpy as np
    from PIL import Image
    per_run = dict.fromkeys(runs, 0)
    for n, job in enumerate(plan.jobs):
        a = np.asarray(Image.open(work / "naive" / f"{n}.png").convert("RGB"), dtype=np.int16)
        for run in runs:
            b = np.asarray(Image.open(work / run / "images" / f"{job.key}.png").convert("RGB"), dtype=np.int16)
            per_run[run] = max(per_run[run], int(np.abs(a - b).max()))
    worst, tolerance = max(per_run.values()), TOLERANCE[dtype]
    out(f"same images: max difference {worst} level(s) per channel over {len(plan.jobs)} jobs x {len(runs)} "
        f"harness run(s) (tolerance {tolerance} in {dtype}: batching changes kernels)")
    for run, diff in per_run.items():
        if diff > tolerance:
            out(f"  DIFFERENT: {run} differs by {diff} levels")
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="harness bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny",
                   help="tiny (CPU default), sd15-random (SD1.5-sized, GPU) or sd2-random (SD v2's shapes, GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: 128 on tiny, 512 otherwise)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 10 on tiny, 50 otherwise)")
    p.add_argument("--prompts", type=int, default=None, help=f"1-{len(COLOURS)} (default: 8 on tiny, 4 otherwise)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per prompt (default 4)")
    p.add_argument("--batch-size", type=int, default=None, help="the harness's batch size (default: automatic)")
    p.add_argument("--speedups", default="", help="comma list: channels_last,fuse_qkv,compile,cudagraphs")
    p.add_argument("--streams", default="auto", help="CPU generation threads for the harness (auto: 2 on 2+ cores)")
    p.add_argument("--ablate", nargs="?", const="all", default="",
                   help="also measure each optimisation turned off/on: 'all' (no value) or a comma list of "
                        + ",".join(ABLATIONS))
    p.add_argument("--quick", action="store_true", help="a tiny sweep for CI: checks images agree")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of the naive loop and the harness, alternated; the ratio is their median")
    a = p.parse_args(argv)
    from .checkpoints import CheckpointError
    from .core import SettingsError
    from .experiment import ExperimentError
    from .worker import SPEEDUPS, Tuning

    problems: list[str] = []
    sweep = _sweep(p, a, problems)
    if a.repeat < 1:
        problems.append(f"--repeat {a.repeat}: expected at least 1 round")
    if a.batch_size is not None and a.batch_size < 1:
        problems.append(f"--batch-size {a.batch_size}: expected at least 1 (or leave it out: automatic)")
    if a.streams != "auto" and not (a.streams.isdigit() and 1 <= int(a.streams) <= 64):
        problems.append(f"--streams {a.streams!r}: expected auto or a whole number of threads, 1 to 64")
    speedups = tuple(x for x in a.speedups.split(",") if x)
    problems += [f"--speedups: {s!r} is not one of {', '.join(SPEEDUPS)}" for s in speedups if s not in SPEEDUPS]
    problems += _device_problems(a.device, a.dtype)
    try:
        ablation_variants(a.ablate, "cpu", Tuning())
    except ValueError as exc:
        problems.append(str(exc))
    if problems:  # every bad option at once, before minutes of measuring
        p.error("; ".join(problems))
    try:
        figures = run_bench(sweep, device=a.device, dtype=a.dtype, ablate=a.ablate, batch_size=a.batch_size,
                            speedups=speedups, repeat=a.repeat,
                            streams=a.streams if a.streams == "auto" else int(a.streams))
    except SettingsError as exc:  # a device or dtype this machine does not have, or a speedup it cannot run
        p.error(str(exc) if str(exc).startswith("--") else f"--device/--dtype: {exc}")
    except CheckpointError as exc:
        p.error(f"--model {a.model!r}: {exc}")
    except ExperimentError as exc:  # the sweep's own experiment: only --model can make it unusable
        p.error(f"--model {a.model!r}: " + "; ".join(re.sub(r"^key '[^']*': ", "", x) for x in exc.problems))
    return 0 if figures["images_agree"] else 1  # a harness run beyond the tolerance fails the command


def _device_problems(device: str, dtype: str) -> list[str]:
    """What is wrong with --device and --dtype on this machine, each named (none: both usable)."""
    from .core import SettingsError
    from .devices import pick_device, pick_dtype

    problems = []
    try:
        device = pick_device(device)
    except SettingsError as exc:
        problems.append(f"--device: {exc}")
        device = "cpu"  # the dtype is still checked, against the device every machine has
    try:
        pick_dtype(dtype, device)
    except SettingsError as exc:
        problems.append(f"--dtype: {exc}")
    return problems


def _sweep(p: argparse.ArgumentParser, a: argparse.Namespace, problems: list[str]) -> Sweep:
    """The sweep the options ask for; each bad one is added to `problems`, naming it."""
    given = [f"--{name}" for name in ("size", "steps", "prompts", "seeds") if getattr(a, name) is not None]
    if a.quick:
        if given:
            problems.append(f"--quick runs its own 8-image sweep; leave out {', '.join(given)}")
        return Sweep(model=a.model, size=64, steps=2, prompts=2, seeds=2)
    tiny = a.model == "tiny"
    size = (128 if tiny else 512) if a.size is None else a.size  # tiny: the demo experiment's size
    steps = (10 if tiny else 50) if a.steps is None else a.steps
    prompts = (8 if tiny else 4) if a.prompts is None else a.prompts
    seeds = 4 if a.seeds is None else a.seeds
    checks = [(size < 64 or size % 8, f"--size {size}: expected a multiple of 8, at least 64"),
              (steps < 2, f"--steps {steps}: expected at least 2 (img2img at strength 0.5 runs int(0.5 * steps) steps)"),
              (not 1 <= prompts <= len(COLOURS), f"--prompts {prompts}: expected 1 to {len(COLOURS)} (one colour word each)"),
              (seeds < 1, f"--seeds {seeds}: expected at least 1")]
    problems += [text for bad, text in checks if bad]
    return Sweep(model=a.model, size=size, steps=steps, prompts=prompts, seeds=seeds)


if __name__ == "__main__":
    sys.exit(main())
