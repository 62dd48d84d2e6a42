"""The only code that runs diffusion: devices, dtypes, pipeline cache, memory policy, batches.

Reproducibility contract:

- every image has its own CPU `torch.Generator` seeded with `job.seed`, so its
  initial noise is the same on any device and whatever else is in the batch;
- prompts are encoded one at a time (and cached), so an image's conditioning
  does not depend on its batch either;
- the same job alone twice gives bitwise-identical pixels on the same machine;
  the same job in a different batch may differ by about one uint8 level
  (different kernels). `exact=True` runs one image per pipeline call.

Pixels are converted to uint8 on the device and copied to the CPU once per batch.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from harness import checkpoints as ck
from harness import pipelines, schedulers
from harness.core import Job, SettingsError
from harness.images import fit_cover, image_hash, load_init_image  # init images live in a torch-free module

__all__ = [
    "DTYPES", "MEMORY_OPTIONS", "OOM_ERRORS", "Chunk", "OutOfMemory", "PipelineCache", "SettingsError", "apply_memory",
    "auto_batch_size", "auto_memory", "check_settings", "dtype_name", "fit_cover", "free_accelerator_memory",
    "generate_batch", "image_hash", "is_oom", "load_init_image", "memory_options", "pick_device", "pick_dtype",
    "run_batched", "to_uint8", "weight_bytes",
]

# ---------------------------------------------------------------- device and dtype

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def pick_device(requested: str = "auto") -> str:
    """`auto`: cuda, then mps, then cpu. An explicit device must exist."""
    req = (requested or "auto").strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind, _, index = req.partition(":")
    if kind == "cpu" and not index:
        return "cpu"
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingsError(f"device={requested!r}: CUDA is not available here (torch {torch.__version__}, "
                             f"built with CUDA {torch.version.cuda}); use device='auto' or 'cpu'")
        if index and (not index.isdigit() or int(index) >= count):
            raise SettingsError(f"device={requested!r}: expected cuda:0..cuda:{count - 1} ({count} GPU(s) visible)")
        return req
    if kind == "mps" and not index:
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SettingsError(f"device={requested!r}: Apple MPS is not available here; use 'auto' or 'cpu'")
        return "mps"
    raise SettingsError(f"device={requested!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def pick_dtype(requested: str = "auto", device: str = "cpu") -> torch.dtype:
    """`auto`: fp16 on CUDA, fp32 on CPU and MPS. Explicit: fp32, fp16, bf16."""
    req = _DTYPE_ALIASES.get((requested or "auto").lower(), (requested or "auto").lower())
    if req == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if req not in DTYPES:
        raise SettingsError(f"dtype={requested!r}: expected 'auto', {', '.join(map(repr, DTYPES))}")
    if req == "fp16" and device == "cpu":
        raise SettingsError("dtype='fp16' on device 'cpu': many CPU kernels lack fp16; use 'fp32' or 'bf16'")
    return DTYPES[req]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


# ---------------------------------------------------------------- memory policy

MEMORY_OPTIONS = ("attention_slicing", "vae_slicing", "vae_tiling", "model_cpu_offload", "sequential_cpu_offload")
GIB = 1 << 30
# `auto` on CUDA, by free memory F (after nothing of this pipeline is on the GPU) and the
# pipeline's weight bytes W / largest component U:
#   F >= W + 6 GiB  -> nothing            (weights resident, whole batches decoded at once)
#   F >= W + 2 GiB  -> vae_slicing        (decode one image at a time: VAE peak no longer grows with batch)
#   F >= U + 2 GiB  -> model_cpu_offload, vae_slicing   (one model on the GPU at a time)
#   otherwise       -> sequential_cpu_offload, vae_slicing, attention_slicing   (slow, minimal memory)
AUTO_ROOMY, AUTO_TIGHT, AUTO_OFFLOAD = 6 * GIB, 2 * GIB, 2 * GIB


def weight_bytes(pipe) -> tuple[int, int]:
    """(all model weights, largest model) in bytes."""
    sizes = [sum(p.numel() * p.element_size() for p in m.parameters())
             for m in (pipe.unet, pipe.vae, pipe.text_encoder) if m is not None]
    return sum(sizes), max(sizes)


def auto_memory(pipe, device: str, *, free_bytes: int | None = None) -> list[str]:
    """The options `apply_memory(pipe, "auto", device)` would choose (see the thresholds above)."""
    if not device.startswith("cuda"):
        return []
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(torch.device(device))[0]
    total, largest = weight_bytes(pipe)
    if free_bytes >= total + AUTO_ROOMY:
        return []
    if free_bytes >= total + AUTO_TIGHT:
        return ["vae_slicing"]
    if free_bytes >= largest + AUTO_OFFLOAD:
        return ["model_cpu_offload", "vae_slicing"]
    return ["sequential_cpu_offload", "vae_slicing", "attention_slicing"]


def memory_options(policy: str | Sequence[str], device: str) -> list[str] | None:
    """The options a memory policy names, checked against `device` (None for "auto", decided per pipeline)."""
    if isinstance(policy, str):
        if policy == "auto":
            return None
        if policy == "none":
            return []
        raise SettingsError(f"memory={policy!r}: expected 'auto', 'none' or a list of {', '.join(MEMORY_OPTIONS)}")
    options = list(policy)
    unknown = [o for o in options if o not in MEMORY_OPTIONS]
    if unknown:
        raise SettingsError(f"memory option(s) {unknown}: expected some of {', '.join(MEMORY_OPTIONS)}")
    offload = [o for o in options if o.endswith("cpu_offload")]
    if len(offload) > 1:
        raise SettingsError(f"memory={options}: choose one of model_cpu_offload / sequential_cpu_offload, not both")
    if offload and not device.startswith("cuda"):
        raise SettingsError(f"memory option {offload[0]!r} needs a CUDA device, got device={device!r}; "
                            "leave memory = 'auto' or list only slicing/tiling options")
    return options


def check_settings(device: str, dtypes: Iterable[str], memory: str | Sequence[str]) -> str:
    """The device `device` resolves to, after checking that it exists here and that every dtype and the
    memory policy work on it: a SettingsError before anything is generated rather than during the run."""
    resolved = pick_device(device)
    for dtype in sorted(set(dtypes)):
        pick_dtype(dtype, resolved)
    memory_options(memory, resolved)
    return resolved


def apply_memory(pipe, policy: str | Sequence[str], device: str) -> list[str]:
    """Apply a memory policy and place the pipeline on `device`; returns the options applied.

    `policy` is "auto", "none" or a list of `MEMORY_OPTIONS`. Offload options need
    a CUDA device and leave placement to their hooks; otherwise the pipeline is
    moved to `device`. Call on a pipeline whose models are still on the CPU.
    """
    options = memory_options(policy, device)
    if options is None:
        options = auto_memory(pipe, device)
    if "attention_slicing" in options:
        pipe.enable_attention_slicing()
    if "vae_slicing" in options:
        pipe.vae.enable_slicing()
    if "vae_tiling" in options:
        pipe.vae.enable_tiling()
    if "model_cpu_offload" in options:
        pipe.enable_model_cpu_offload(device=device)
    elif "sequential_cpu_offload" in options:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return options


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- pipeline cache

class PipelineCache:
    """Loads each (checkpoint, mode, scheduler) once; one checkpoint resident at a time.

    txt2img/img2img and scheduler variants of a checkpoint share its models.
    Switching checkpoint (or dtype) drops the old models and frees memory first.
    `memory_applied` lists what the memory policy chose for the resident one;
    `embeds` is a prompt-embedding cache for `generate_batch(embeds_cache=...)`
    that is emptied with the checkpoint (its tensors live on the device).
    """

    def __init__(self, device: str = "auto", *, memory: str | Sequence[str] = "auto",
                 loader: Callable[..., Any] = pipelines.load_pipeline):
        self.device = pick_device(device)
        self.memory = memory
        self._loader = loader
        self._key: tuple | None = None
        self._pipes: dict[tuple, Any] = {}
        self.memory_applied: list[str] = []
        self.embeds: dict = {}
        self.loads = 0

    @property
    def resident(self) -> tuple | None:
        """(fingerprint, source, dtype) of the checkpoint in memory, or None."""
        return self._key

    def get(self, ref: ck.CheckpointRef, mode: str, scheduler: str | None = None, *, dtype: str = "auto"):
        torch_dtype = pick_dtype(dtype, self.device)
        key = (ref.fingerprint, ref.source, str(torch_dtype))
        if key != self._key:
            self.clear()
            base = self._loader(ref, "txt2img", device=None, dtype=torch_dtype)
            self.memory_applied = apply_memory(base, self.memory, self.device)
            self._pipes[("txt2img", None)] = base
            self._key = key
            self.loads += 1
        if (mode, scheduler) not in self._pipes:
            self._pipes[(mode, scheduler)] = pipelines.derive_pipeline(self._pipes[("txt2img", None)], mode, scheduler)
        return self._pipes[(mode, scheduler)]

    def clear(self, *, collect: bool = True) -> None:
        """Drop the resident checkpoint; if there was one and `collect`, also run the garbage collector
        and return the accelerator's cached memory (so the next checkpoint fits)."""
        resident = bool(self._pipes)
        base = self._pipes.get(("txt2img", None))
        if base is not None and any(o.endswith("cpu_offload") for o in self.memory_applied):
            base.remove_all_hooks()
        self._pipes.clear()
        self.embeds.clear()
        self._key = None
        self.memory_applied = []
        del base
        if resident and collect:
            free_accelerator_memory()


# ---------------------------------------------------------------- one batch

EMBEDS_CACHE_LIMIT = 1024  # entries; about 120 MB of fp16 SD1 embeddings
# Prompt encoding is serialised: generation streams share a pipeline's tokenizer, whose padding and
# truncation settings are state of the (fast) tokenizer set on every call, so two threads encoding at
# once can get each other's padding (a 5-token embedding where 77 were asked for).
_ENCODE_LOCK = threading.Lock()


_GROUP_FIELDS = ("fingerprint", "checkpoint", "mode", "strength", "steps", "guidance", "scheduler", "width",
                 "height", "dtype", "watermark")


def _check_batch(pipe, jobs: Sequence[Job], device: str, init_images) -> None:
    if not jobs:
        raise ValueError("generate_batch(jobs=[]): expected at least one Job")
    first = jobs[0]
    for n, job in enumerate(jobs[1:], start=1):
        if job.group != first.group:
            field = next(f for f in _GROUP_FIELDS if getattr(job, f) != getattr(first, f))
            raise ValueError(f"generate_batch: all jobs must share a group; jobs[{n}].{field}="
                             f"{getattr(job, field)!r} but jobs[0].{field}={getattr(first, field)!r}")
    expected_cls = ("StableDiffusionPipeline" if first.mode == "txt2img" else
                    "StableDiffusionImg2ImgPipeline" if first.mode == "img2img" else None)
    if expected_cls is None:
        raise ValueError(f"job.mode={first.mode!r}: expected one of {', '.join(ck.MODES)}")
    if type(pipe).__name__ != expected_cls:
        raise ValueError(f"job.mode={first.mode!r} needs a {expected_cls}, got {type(pipe).__name__}; "
                         f"get it from PipelineCache.get(ref, {first.mode!r}, scheduler)")
    schedulers.scheduler_spec(first.scheduler)
    have = schedulers.scheduler_name_of(pipe)
    if have != first.scheduler:
        raise ValueError(f"job.scheduler={first.scheduler!r} but the pipeline's scheduler is "
                         f"{type(pipe.scheduler).__name__} ({have!r}); load it with scheduler={first.scheduler!r}")
    fingerprint = getattr(pipe, "harness_fingerprint", None)
    if fingerprint is not None and fingerprint != first.fingerprint:
        raise ValueError(f"job.fingerprint={first.fingerprint!r} but the pipeline holds checkpoint {fingerprint!r}")
    want = pick_dtype(first.dtype, device)
    if pipe.unet.dtype != want:
        raise ValueError(f"job.dtype={first.dtype!r} means {want} on {device}, "
                         f"but the pipeline holds {pipe.unet.dtype}")
    if first.steps < 1:
        raise ValueError(f"job.steps={first.steps}: expected at least 1")
    for name in ("width", "height"):
        v = getattr(first, name)
        if v < 8 or v % 8:
            raise ValueError(f"job.{name}={v}: expected a positive multiple of 8 (the VAE downsamples by 8)")
    if first.mode == "txt2img":
        if init_images is not None:
            raise ValueError("generate_batch: init_images given for txt2img jobs; pass them only for img2img")
        return
    if init_images is None or len(init_images) != len(jobs):
        got = "none" if init_images is None else len(init_images)
        raise ValueError(f"generate_batch: img2img needs one init image per job ({len(jobs)}), got {got}")
    for n, img in enumerate(init_images):
        if img.size != (first.width, first.height):
            raise ValueError(f"init_images[{n}] is {img.size[0]}x{img.size[1]}, expected {first.width}x{first.height}; "
                             f"prepare it with load_init_image(path, width, height)")
    strength = first.strength
    if strength is None or not 0.0 < strength <= 1.0:
        raise ValueError(f"job.strength={strength!r}: img2img needs a strength in (0, 1]")
    if int(strength * first.steps) < 1:
        raise ValueError(f"job.strength={strength} with steps={first.steps} runs int({strength}*{first.steps}) = 0 "
                         f"denoising steps; raise steps to at least {int(1 / strength) + 1} or raise strength")


def _embeddings(pipe, jobs: Sequence[Job], cache: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds) for the batch, one prompt encoded at a time."""
    cache = {} if cache is None else cache
    device = pipe._execution_device
    dtype = str(pipe.text_encoder.dtype)
    conds, unconds = [], []
    for job in jobs:
        key = (job.fingerprint, dtype, job.prompt, job.negative_prompt)
        if key not in cache:
            with _ENCODE_LOCK, torch.no_grad():
                cond, uncond = pipe.encode_prompt(job.prompt, device, 1, True, negative_prompt=job.negative_prompt)
            while len(cache) >= EMBEDS_CACHE_LIMIT:
                cache.pop(next(iter(cache)))
            cache[key] = (cond, uncond)
        cond, uncond = cache[key]
        conds.append(cond)
        unconds.append(uncond)
    return torch.cat(conds), torch.cat(unconds)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) floats in [0, 1] -> B arrays HxWx3 uint8; converted on the device, one copy to the CPU."""
    pixels = (images.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    host = pixels.cpu().numpy()
    return [host[i] for i in range(host.shape[0])]


def generate_batch(pipe, jobs: Sequence[Job], *, device: str, init_images: Sequence[Image.Image] | None = None,
                   embeds_cache: dict | None = None, exact: bool = False, host_uint8: bool = False,
                   step_callback: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Run one pipeline call for jobs of one group; HxWx3 uint8 arrays in job order.

    `device` is the device the pipeline runs on (it decides what `job.dtype`
    means). `embeds_cache` (a dict the caller keeps) reuses prompt encodings
    across batches. `exact=True` makes one call per image. `step_callback(step,
    timestep)` is called after every denoising step. `host_uint8=True` copies
    the float images to the CPU before converting (the benchmark's "off" case).
    """
    jobs = list(jobs)
    _check_batch(pipe, jobs, device, init_images)
    if exact and len(jobs) > 1:
        out: list[np.ndarray] = []
        for n, job in enumerate(jobs):
            one = None if init_images is None else [init_images[n]]
            out += generate_batch(pipe, [job], device=device, init_images=one, embeds_cache=embeds_cache,
                                  host_uint8=host_uint8, step_callback=step_callback)
        return out
    first = jobs[0]
    cond, uncond = _embeddings(pipe, jobs, embeds_cache)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=first.steps,
        guidance_scale=first.guidance, num_images_per_prompt=1, output_type="pt",
        generator=[torch.Generator(device="cpu").manual_seed(int(job.seed)) for job in jobs],
    )
    if step_callback is not None:
        def on_step(_pipe, step, timestep, tensors):
            step_callback(int(step), int(timestep))
            return tensors
        kwargs["callback_on_step_end"] = on_step
    if first.mode == "txt2img":
        kwargs.update(height=first.height, width=first.width)
    else:
        kwargs.update(image=list(init_images), strength=first.strength)
    images = pipe(**kwargs).images
    return to_uint8(images.cpu() if host_uint8 else images)


# ---------------------------------------------------------------- batching with OOM back-off

OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, OOM_ERRORS) or "out of memory" in str(exc).lower()


class OutOfMemory(RuntimeError):
    """Even a batch of one image does not fit."""


@dataclass(frozen=True)
class Chunk:
    """One successful call: `items[k]` produced `results[k]` in batch slot k."""

    start: int          # index of items[0] in the full list
    items: list
    results: list
    batch_size: int     # images in this call (= len(items))
    limit: int          # batch size in force after any back-off


def run_batched(fn: Callable[[list], Iterable], items: Iterable, batch_size: int, *,
                on_oom: Callable[[str], None] | None = None) -> Iterator[Chunk]:
    """Yield `Chunk`s of `fn(chunk)` in order, halving the batch size on out-of-memory.

    A chunk that runs out of memory is retried at half the size (the CUDA cache
    is emptied first) down to 1; at 1 it raises `OutOfMemory`. The reduced size
    is kept for the rest of the items. Because this is a generator, the caller
    can persist each chunk before the next one runs, so a crash loses at most
    the batch in flight. Out-of-memory is an exception in `OOM_ERRORS` or one
    whose message contains "out of memory".
    """
    items = list(items)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    limit, start = int(batch_size), 0
    while start < len(items):
        chunk = items[start:start + limit]
        failure = None
        try:
            results = list(fn(chunk))
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM
            if not is_oom(exc):
                raise
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if failure is None:
            if len(results) != len(chunk):
                raise ValueError(f"run_batched: fn returned {len(results)} results for {len(chunk)} items")
            yield Chunk(start, chunk, results, len(chunk), limit)
            start += len(chunk)
            continue
        free_accelerator_memory()  # outside the except block: the traceback no longer pins tensors
        if limit == 1:
            raise OutOfMemory(f"out of memory with batch size 1 at item {start} ({failure}). Lower width/height, "
                              f"use dtype 'fp16', or set memory = ['model_cpu_offload', 'vae_slicing']")
        new_limit = max(1, limit // 2)
        if on_oom is not None:
            on_oom(f"out of memory at batch size {limit} (items {start}..{start + len(chunk) - 1}); "
                   f"retrying with batch size {new_limit}: {failure}")
        limit = new_limit


CPU_BATCH, MPS_BATCH, MAX_BATCH = 4, 2, 16


def auto_batch_size(device: str, width: int, height: int, *, free_bytes: int | None = None,
                    vae_slicing: bool = False, model_scale: float = 1.0, max_batch: int = MAX_BATCH) -> int:
    """A starting batch size; `run_batched`'s back-off corrects an over-estimate.

    CPU: 4, MPS: 2. CUDA: from free memory after the weights are loaded, using
    SD v1.5 fp16 activation costs per 512x512 image with guidance of about
    0.35 GiB for the UNet and 0.9 GiB for an un-sliced VAE decode (scaled by pixel
    count and `model_scale`), keeping 1 GiB spare.
    """
    if device == "cpu":
        return CPU_BATCH
    if device == "mps":
        return MPS_BATCH
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(torch.device(device))[0]
    area = (width * height) / (512 * 512) * model_scale
    per_image = 0.35 * GIB * area + (0 if vae_slicing else 0.9 * GIB * area)
    fixed = 1 * GIB + (0.9 * GIB * area if vae_slicing else 0)
    return int(max(1, min(max_batch, (free_bytes - fixed) // per_image)))
