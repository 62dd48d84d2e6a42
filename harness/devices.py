"""Which device and dtype to run on, and how to fit a pipeline into the device's memory.

`pick_device` / `pick_dtype` resolve "auto" and reject what this machine cannot run;
`apply_memory` applies a memory policy ("auto", "none" or a list of `MEMORY_OPTIONS`)
and places a pipeline on its device; `check_settings` checks all of it before a run.
"""

from __future__ import annotations

import gc
from typing import Iterable, Sequence

import torch

from harness.core import SettingsError

__all__ = [
    "DTYPES", "MEMORY_OPTIONS", "apply_memory", "auto_memory", "check_settings", "dtype_name",
    "free_accelerator_memory", "memory_options", "pick_device", "pick_dtype", "weight_bytes",
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
