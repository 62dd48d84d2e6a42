"""The only code that runs diffusion: the pipeline cache and one batch of images.

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

import threading
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from harness import checkpoints as ck
from harness import host_schedule, pipelines, schedulers
from harness.core import Job, SettingsError
from harness.devices import (apply_memory, auto_memory, free_accelerator_memory, memory_options, pick_device,
                             pick_dtype, weight_bytes)
from harness.images import fit_cover, image_hash, load_init_image  # init images live in a torch-free module

__all__ = [
    "PipelineCache", "fit_cover", "generate_batch", "image_hash", "load_init_image", "to_uint8",
]

# ---------------------------------------------------------------- pipeline cache

class PipelineCache:
    """Loads each (checkpoint, mode, scheduler) once; one checkpoint resident at a time.

    txt2img/img2img and scheduler variants of a checkpoint share its models.
    Switching checkpoint (or dtype) drops the old models and frees memory first.
    `memory_applied` lists what the memory policy chose for the resident one;
    `embeds` is a prompt-embedding cache for `generate_batch(embeds_cache=...)`
    that is emptied with the checkpoint (its tensors live on the device). On CUDA, `host_schedule` keeps
    DDIM's and PNDM's timesteps on the host (`harness.host_schedule`: the same pixels, no wait per step).
    """

    def __init__(self, device: str = "auto", *, memory: str | Sequence[str] = "auto",
                 loader: Callable[..., Any] = pipelines.load_pipeline, host_schedule: bool = True):
        self.device = pick_device(device)
        self.host_schedule = host_schedule
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
            self.memory_applied = apply_memory(base, self._memory_for(base, ref), self.device)
            self._pipes[("txt2img", None)] = base
            self._key = key
            self.loads += 1
        if (mode, scheduler) not in self._pipes:
            self._pipes[(mode, scheduler)] = pipelines.derive_pipeline(self._pipes[("txt2img", None)], mode, scheduler)
        pipe = self._pipes[(mode, scheduler)]
        if self.host_schedule and self.device.startswith("cuda"):  # steps that do not wait for the card
            host_schedule.attach(pipe)
        return pipe

    def _memory_for(self, base, ref: ck.CheckpointRef) -> list[str]:
        """The memory options for `base`: the policy's, or for "auto" those chosen from the card's free memory.
        A UNet replayed as CUDA graphs must stay on the card, so an offload "auto" would choose for it is a
        SettingsError that says why (an offload named in the policy is refused before the run starts)."""
        options = memory_options(self.memory, self.device)
        if options is not None:
            return options
        options = auto_memory(base, self.device)
        offload = [o for o in options if o.endswith("cpu_offload")]
        if offload and getattr(base.unet, "harness_replays_graphs", False):
            total, _ = weight_bytes(base)
            raise SettingsError(
                f"memory = 'auto' would choose {offload[0]} for checkpoint {ref.name!r} on {self.device} "
                f"(its weights take {total / 2**30:.1f} GiB and the card has too little free memory to keep "
                f"them with room to spare), but speedups 'cudagraphs' needs the UNet's weights to stay on the "
                "card; free the card, choose a smaller dtype, or drop 'cudagraphs'")
        return options

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
    """(prompt_embeds, negative_prompt_embeds) for the batch, one prompt encoded at a time; a job whose
    `emphasis` is set has its brackets read as weights (:mod:`harness.weighted`). With `cache=None` every
    image is encoded, as one pipeline call per image would (the benchmark's "no cache" row)."""
    device = pipe._execution_device
    dtype = str(pipe.text_encoder.dtype)
    conds, unconds = [], []
    for job in jobs:
        key = (job.fingerprint, dtype, job.prompt, job.negative_prompt, job.emphasis)
        pair = None if cache is None else cache.get(key)
        if pair is None:
            with _ENCODE_LOCK, torch.no_grad():
                if job.emphasis:
                    from .weighted import weighted_embeddings
                    pair = (weighted_embeddings(pipe, job.prompt, device),
                            weighted_embeddings(pipe, job.negative_prompt, device))
                else:
                    pair = pipe.encode_prompt(job.prompt, device, 1, True, negative_prompt=job.negative_prompt)
            if cache is not None:
                while len(cache) >= EMBEDS_CACHE_LIMIT:
                    cache.pop(next(iter(cache)))
                cache[key] = pair
        conds.append(pair[0])
        unconds.append(pair[1])
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
