"""The generation side of a run: one object that loads checkpoints, generates
batches of a group and finishes each image (health check, optional watermark,
provenance, atomic PNG). The local runner drives it in-process; Ray workers
each hold one. Only this module and generate.py run diffusion.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .core import Job
from .ledger import Done
from .provenance import a1111_model_name, a1111_parameters, provenance_record, write_png_atomic

PNG_LEVEL = 1  # zlib level: ~2x faster than Pillow's default at a few % more bytes
SPEEDUPS = ("channels_last", "fuse_qkv", "compile", "cudagraphs")  # opt-in, in the order they are applied


def resolve_streams(streams: int | str, device: str) -> int:
    """Generation threads: `auto` is 2 on a CPU with 2+ threads (small models leave cores idle inside
    one call; measured 1.3x the images/s of one stream on 2 cores), otherwise 1; accelerators use 1."""
    import torch

    if device != "cpu":
        return 1
    if streams == "auto":
        return 2 if torch.get_num_threads() >= 2 else 1
    return int(streams)


@dataclass(frozen=True)
class Tuning:
    """Knobs that change speed, not what is drawn (at most kernel rounding: the benchmark checks every row's
    images against the naive loop's within its tolerance, and turns each knob off to measure it)."""

    png_level: int = PNG_LEVEL
    writers: int = 4                  # PNG encode/write threads; 0 = in the generation thread
    speedups: tuple[str, ...] = ()    # opt-in (`SPEEDUPS`): channels_last, fused QKV projections, torch.compile,
                                      # torch.compile with CUDA graphs
    embeds_cache: bool = True         # reuse prompt encodings (off: every image encodes its prompts)
    streams: int | str = "auto"       # CPU generation threads sharing the weights (`resolve_streams`)
    device_uint8: bool = True         # convert to uint8 on the device, one transfer per batch
    host_schedule: bool = True        # CUDA: DDIM/PNDM timesteps on the host, so no step waits for the card
    on_load: Callable | None = None   # called with every loaded pipeline (timing hooks)
    timings: dict | None = None       # if given, "spans" collects (start, end) of every pipeline call


def _loader(tuning: Tuning):
    from .pipelines import load_pipeline

    def load(ref, mode, **kw):
        pipe = load_pipeline(ref, mode, **kw)
        if "channels_last" in tuning.speedups:
            import torch
            pipe.unet.to(memory_format=torch.channels_last)
        if "fuse_qkv" in tuning.speedups:  # one projection matmul per attention instead of three (two)
            pipe.unet.fuse_qkv_projections()
        if {"compile", "cudagraphs"} & set(tuning.speedups):
            import torch

            from .layouts import channels_last_skips
            channels_last_skips(pipe.unet)  # skip connections kept channels_last on CUDA (layouts.py)
            if "cudagraphs" in tuning.speedups:  # and replayed as CUDA graphs (CUDA only: run._check_cudagraphs)
                pipe.unet = replayed(torch.compile(pipe.unet, mode="reduce-overhead"))
            else:
                pipe.unet = torch.compile(pipe.unet)
        if tuning.on_load is not None:
            tuning.on_load(pipe)
        return pipe
    return load


def replayed(unet):
    """`unet` (compiled to replay CUDA graphs) made safe for a denoising loop: a replay writes its output
    into the buffers of the replay before, so each call marks a new step and hands back a copy of its
    output. A scheduler that keeps earlier outputs (PNDM keeps the UNet's own output tensors when there is
    no guidance arithmetic to make new ones) would otherwise read overwritten values. Marked with
    `harness_replays_graphs` (the memory policy reads it: replayed weights must stay on the card)."""
    import torch

    @torch.compiler.disable
    def begin(module, args, kwargs):
        torch.compiler.cudagraph_mark_step_begin()

    @torch.compiler.disable
    def copy(module, args, kwargs, output):
        if isinstance(output, tuple):
            return tuple(o.clone() if torch.is_tensor(o) else o for o in output)
        return type(output)(sample=output.sample.clone())

    unet.register_forward_pre_hook(begin, with_kwargs=True)
    unet.register_forward_hook(copy, with_kwargs=True)
    unet.harness_replays_graphs = True
    return unet


def write_now(fn, *args, **kw) -> Future:
    """Run fn in this thread; the result or error arrives as a completed Future."""
    f: Future = Future()
    try:
        f.set_result(fn(*args, **kw))
    except BaseException as exc:  # noqa: BLE001 - surfaced before the job is marked done
        f.set_exception(exc)
    return f


@dataclass
class Finished:
    rows: list[Done]
    writes: list[Future]
    unhealthy: int


def _checkpoint_record(ref) -> dict:
    """Where an image's weights came from, beyond their fingerprint: kind, source (hub id or path), family
    and, for a single file, the config it was built with (which changes pixels)."""
    return {"kind": ref.kind, "source": ref.source, "family": ref.family,
            **({"config": ref.config} if ref.config else {})}


class Stopped(Exception):
    """A batch abandoned between denoising steps because the run was interrupted (`BatchMaker.stopping`)."""


class BatchMaker:
    def __init__(self, checkpoints: dict, images_dir: Path | str, *, device: str = "auto",
                 memory="auto", tuning: Tuning | None = None, exact: bool = False,
                 batch_size: int | str | None = None):
        from . import generate as gen

        self.gen = gen
        self.checkpoints = checkpoints
        self.images_dir = Path(images_dir)
        self.tuning = tuning or Tuning()
        self.cache = gen.PipelineCache(device, memory=memory, loader=_loader(self.tuning),
                                       host_schedule=self.tuning.host_schedule)
        self.device = self.cache.device
        self.exact = exact
        self.batch_size = batch_size
        self.host = socket.gethostname()
        self._inits: dict = {}
        self._hashes: dict = {}  # (init image, width, height) -> image_hash of the prepared init
        self._batches = 0
        self._local = threading.local()  # per stream: pipeline views and prompt-embedding cache
        self.stopping = threading.Event()  # set on Ctrl-C: batches running in other streams stop at their next step
        self._loading = threading.Lock()  # streams share one PipelineCache
        self.streams = resolve_streams(self.tuning.streams, self.device)
        self._fits: dict[tuple, int] = {}  # batch size an out-of-memory lowered (`_memory_shape`)

    def size_for(self, job: Job) -> int:
        """The batch size to start a group at: the configured one, or what out-of-memory lowered it to for
        images like this one earlier in the run (so every group does not run out of memory again)."""
        size = batch_size_for(job, self.device, exact=self.exact, batch_size=self.batch_size)
        return min(size, self._fits.get(_memory_shape(job), size))

    def resident_first(self, groups: Iterable[list[Job]]) -> list[list[Job]]:
        """Groups of jobs in their order, those on the checkpoint in memory first: a later stage goes on with
        the checkpoint the pass before it ended on, rather than loading another and that one again. A
        group's own batches are unchanged, so are its pixels."""
        groups, resident = list(groups), self.cache.resident

        def loaded(jobs: list[Job]) -> bool:
            ref = self.checkpoints[jobs[0].checkpoint]
            return resident is not None and (ref.fingerprint, ref.source) == resident[:2]

        return sorted(groups, key=lambda jobs: not loaded(jobs))

    def generate(self, jobs: list[Job], *, on_oom: Callable[[str], None] | None = None) -> Iterator:
        """Chunks (batching.Chunk) of one group's jobs, with per-image seconds attached."""
        from .batching import run_batched

        first = jobs[0]
        with self._loading:
            pipe = self.cache.get(self.checkpoints[first.checkpoint], first.mode, first.scheduler, dtype=first.dtype)
        pipe = self._view(pipe)
        embeds = self.cache.embeds
        if self.streams > 1:
            embeds = self._local.__dict__.setdefault("embeds", {})
        timings = self.tuning.timings

        def call(chunk: list[Job]):
            images = [self._init(j) for j in chunk] if first.mode == "img2img" else None
            t0 = time.perf_counter()
            out = self.gen.generate_batch(pipe, chunk, device=self.device, init_images=images, exact=self.exact,
                                          embeds_cache=embeds if self.tuning.embeds_cache else None,
                                          host_uint8=not self.tuning.device_uint8,
                                          step_callback=self._stop_check if self.streams > 1 else None)
            if timings is not None:
                timings.setdefault("spans", []).append((t0, time.perf_counter()))
            return out

        started, size = time.perf_counter(), self.size_for(first)
        for chunk in run_batched(call, jobs, size, on_oom=on_oom, describe=_describe):
            if chunk.limit < size:
                self._fits[_memory_shape(first)] = min(chunk.limit, self._fits.get(_memory_shape(first), size))
            now = time.perf_counter()
            yield chunk, (now - started) / len(chunk.items)
            started = time.perf_counter()

    def _stop_check(self, _step: int, _timestep: int) -> None:
        if self.stopping.is_set():
            raise Stopped("generation stopped (interrupted)")

    def _view(self, pipe):
        """With several streams, each thread calls its own shallow copy of the pipeline: the weights are
        shared, the scheduler (which holds per-call state) and the call's attributes are not."""
        if self.streams <= 1:
            return pipe
        views = self._local.__dict__.setdefault("views", {})
        cached = views.get(id(pipe))
        if cached is None or cached[0] is not pipe:
            view = copy.copy(pipe)
            view.scheduler = copy.deepcopy(pipe.scheduler)
            cached = views[id(pipe)] = (pipe, view)
        return cached[1]

    def finish(self, chunk, seconds: float, submit=write_now, *, streams: int | None = None) -> Finished:
        """Health-check, watermark and write every image of a chunk; rows to mark done once writes finish.

        Each PNG's provenance records the torch intra-op thread count the chunk was generated with (CPU
        pixels can depend on it, so an `exact` image is reproduced bit for bit with the same count) and
        `streams`, the generation streams running at once (default: this maker's `streams`, as the local
        runner uses them). Called on the generating thread, or by the runner while its streams run: the
        count is process-wide, so it is the one they use."""
        import torch

        from .schedulers import SAMPLER_NAMES, SCHEDULE_TYPES
        from .devices import dtype_name, pick_dtype
        from .metrics.health import check_array

        self._batches += 1
        batch_id = f"{self.host}-{os.getpid()}-{self._batches}"
        dtype_used = dtype_name(pick_dtype(chunk.items[0].dtype, self.device))
        memory = list(self.cache.memory_applied)
        threads, streams = torch.get_num_threads(), self.streams if streams is None else streams
        out = Finished([], [], 0)
        for slot, (job, pixels) in enumerate(zip(chunk.items, chunk.results)):
            ok, flags = check_array(pixels)
            out.unhealthy += not ok
            if job.watermark != "none":
                from .metrics.watermark import embed
                pixels = embed(pixels, job.watermark)
            ref = self.checkpoints[job.checkpoint]
            extra = dict(batch_size=chunk.batch_size, slot=slot, device=self.device, dtype=dtype_used,
                         memory=memory, safety_checker="off", host=self.host, torch_threads=threads,
                         streams=streams)
            out.writes.append(submit(
                write_png_atomic, self.images_dir / f"{job.key}.png", pixels,
                parameters=a1111_parameters(job, sampler=SAMPLER_NAMES.get(job.scheduler, job.scheduler),
                                            schedule=SCHEDULE_TYPES.get(job.scheduler),
                                            model_name=a1111_model_name(job.checkpoint, ref.kind),
                                            model_hash_override=ref.model_hash or None),
                provenance=provenance_record(job, checkpoint=_checkpoint_record(ref), **extra),
                compress_level=self.tuning.png_level))
            out.rows.append(Done(job.key, batch_id=batch_id, batch_size=chunk.batch_size, slot=slot,
                                 seconds=seconds, device=self.device, dtype=dtype_used, memory=memory,
                                 health={"ok": ok, "flags": flags}, host=self.host))
        return out

    def make(self, jobs: list[Job]) -> list[Done]:
        """Generate and write a list of jobs of one group synchronously (what a remote worker does)."""
        rows: list[Done] = []
        for chunk, seconds in self.generate(jobs):
            done = self.finish(chunk, seconds, streams=1)  # one chunk at a time
            for f in done.writes:
                f.result()
            rows += done.rows
        return rows

    def _init(self, job: Job):
        key = (job.init_image, job.width, job.height)
        if key not in self._inits:
            self._inits[key] = self.gen.load_init_image(job.init_image, job.width, job.height)
        if job.init_hash:  # the job's key holds the pixels it was planned from: make it from no others
            from .images import image_hash

            if key not in self._hashes:
                self._hashes[key] = image_hash(self._inits[key])
            found = self._hashes[key]
            if found != job.init_hash:
                raise InitImageChanged(
                    f"init image {job.init_image} changed since this run planned its images (its pixels hash to "
                    f"{found[:12]}, the jobs were planned from {job.init_hash[:12]}): an image made now would be "
                    "filed under the other pixels' key; run again, which plans the images of the file as it is now")
        return self._inits[key]

    def close(self) -> None:
        # A full garbage collection costs ~0.3 s of a CPU run's wall time and frees nothing a CPU needs back.
        self.cache.clear(collect=self.cache.device != "cpu")


class InitImageChanged(OSError):
    """An init image's pixels are not those its jobs were planned (and keyed) from: the file was replaced
    while the run went on, or differs on a remote worker."""


def _memory_shape(job: Job) -> tuple:
    """What a batch's memory depends on most, for remembering the batch size that fits (img2img and txt2img
    alike: a size that ran out of memory in one is not tried again in the other)."""
    return (job.checkpoint, job.width, job.height, job.dtype)


def _describe(job: Job) -> str:
    prompt = job.prompt if len(job.prompt) <= 60 else job.prompt[:57] + "..."
    return f"image {job.key[:12]} ({job.checkpoint} {job.mode} {job.width}x{job.height}, prompt {prompt!r})"


def batch_size_for(job: Job, device: str, *, exact: bool, batch_size: int | str | None) -> int:
    """1 when exact, the requested size, else the automatic size for the device (OOM back-off corrects it)."""
    if exact:
        return 1
    if isinstance(batch_size, int):
        return batch_size
    from .batching import auto_batch_size
    return auto_batch_size(device, job.width, job.height)


def batches(groups: Iterable[list[Job]], size_of: Callable[[Job], int]) -> list[list[Job]]:
    """Split each group into batches of its batch size (order kept: checkpoints stay together)."""
    out = []
    for jobs in groups:
        n = max(1, size_of(jobs[0]))
        out += [jobs[i:i + n] for i in range(0, len(jobs), n)]
    return out
