"""Running a list of items through a function in batches, halving the batch size on out-of-memory.

`run_batched` yields each successful call as a `Chunk`; `auto_batch_size` picks a starting size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from harness.core import OutOfMemory
from harness.devices import GIB, free_accelerator_memory

__all__ = ["OOM_ERRORS", "Chunk", "OutOfMemory", "auto_batch_size", "is_oom", "run_batched"]

# ---------------------------------------------------------------- batching with OOM back-off

OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, OOM_ERRORS) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class Chunk:
    """One successful call: `items[k]` produced `results[k]` in batch slot k."""

    start: int          # index of items[0] in the full list
    items: list
    results: list
    batch_size: int     # images in this call (= len(items))
    limit: int          # batch size in force after any back-off


def run_batched(fn: Callable[[list], Iterable], items: Iterable, batch_size: int, *,
                on_oom: Callable[[str], None] | None = None,
                describe: Callable[[object], str] = lambda item: f"item {item!r}") -> Iterator[Chunk]:
    """Yield `Chunk`s of `fn(chunk)` in order, halving the batch size on out-of-memory.

    A chunk that runs out of memory is retried at half the size, halved again
    until it is smaller than the chunk that failed (the CUDA cache is emptied
    first), down to 1; at 1 it raises `OutOfMemory` naming the
    item (`describe`). The reduced size is kept for the rest of the items (the
    last chunk's `limit` tells a caller the size to start the next list at).
    Because this is a generator, the caller can persist each chunk before the
    next one runs, so a crash loses at most the batch in flight. Out-of-memory
    is an exception in `OOM_ERRORS` or one whose message contains "out of memory".
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
        if limit == 1:  # a lone image under a larger limit is tried once more at 1, its memory freed first
            raise OutOfMemory(f"out of memory with batch size 1 making {describe(chunk[0])} ({failure}). Lower "
                              f"width/height, use dtype 'fp16', or set memory = ['model_cpu_offload', 'vae_slicing']")
        new_limit = limit // 2
        while new_limit >= len(chunk):  # a short chunk (a group's last) failed under the limit: go below it
            new_limit //= 2
        new_limit = max(1, new_limit)
        if on_oom is not None:
            on_oom(f"out of memory at batch size {len(chunk)} (items {start}..{start + len(chunk) - 1}); "
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
