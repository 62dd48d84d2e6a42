"""What the benchmarks measure with: spans of UNet calls, FLOPs per forward, the card's peak, peak memory.

Shared by `harness bench` (the runner against the naive loop) and `harness bench-unet` (the UNet alone).
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time

# Dense tensor-core peaks (TFLOP/s, bf16/fp16, no sparsity) by device-name fragment, from the vendors' spec
# sheets (more specific names first).
GPU_PEAK_TFLOPS = {"H200 NVL": 835.0, "H200": 989.0,
                   "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                   "A100": 312.0,
                   "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans: concurrent calls of several streams count once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class DenoiseTimer:
    """Records the spans of UNet forwards, counts them and the latents they evaluate (a guided batch of B
    images is 2B latents per call); `timings["spans"]` collects the spans of whole pipeline calls (text
    encoding, denoising, decoding). `seconds` and `pipeline` are the wall time covered by each kind of
    span, so concurrent streams are not counted twice.

    On CUDA a forward is timed by events recorded on its stream, read once the run is over, so timing
    adds no synchronisation (one per call would stall a loop of many small calls more than one of few
    large ones); elsewhere by the host clock. `events(device)` gives a recorded event-like object (with
    `elapsed_time(other)` in ms and `synchronize()`), or None for the host clock."""

    def __init__(self, events=None):
        import threading

        self.calls, self.latents, self._t = 0, 0, threading.local()
        self._events = events or cuda_event
        self._marks: list[tuple] = []   # (device, start, end): perf_counter seconds or events
        self._origins: dict = {}        # device -> (an event, the perf_counter time it ran at)
        self.timings: dict = {"spans": []}

    @property
    def unet_spans(self) -> list[tuple[float, float]]:
        spans = []
        for device, start, end in self._marks:
            if isinstance(start, float):
                spans.append((start, end))
                continue
            end.synchronize()
            ref, t0 = self._origins[device]
            spans.append((t0 + ref.elapsed_time(start) / 1e3, t0 + ref.elapsed_time(end) / 1e3))
        return spans

    @property
    def seconds(self) -> float:
        return covered(self.unet_spans)

    @property
    def pipeline(self) -> float:
        return covered(self.timings["spans"])

    def _mark(self, device):
        if device not in self._origins:  # once per device: an event whose host time is known
            ref = self._events(device)
            if ref is not None:
                ref.synchronize()
            self._origins[device] = (ref, time.perf_counter())
        event = self._events(device)
        return time.perf_counter() if event is None else event

    def attach(self, pipe) -> None:
        def pre(_m, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            self._t.device = sample.device
            self._t.batch = int(sample.shape[0])
            self._t.start = self._mark(sample.device)

        def post(_m, _a, _o):
            self._marks.append((self._t.device, self._t.start, self._mark(self._t.device)))
            self.calls += 1
            self.latents += self._t.batch

        import torch

        # A compiled UNet (torch.compile) would trace these hooks into its graph, where the events are
        # never recorded at run time: they run as plain Python around the compiled forward instead.
        unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        unet.register_forward_pre_hook(torch.compiler.disable(pre), with_kwargs=True)
        unet.register_forward_hook(torch.compiler.disable(post))


def cuda_event(device):
    """A timing event recorded on `device`'s current stream (the card the work runs on, which need not be
    the current one: an event recorded with no stream marks the current card's), or None off CUDA.
    `device`: a torch.device or its name ("cuda:1")."""
    import torch
    device = torch.device(device)
    if device.type != "cuda":
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event


def percent_of_peak(tflops: float, peak: float) -> str:
    """The share of `peak` as in "23.3% of peak", or "" where the card has no listed peak for the dtype
    (NaN: fp32, or a card the table does not name) rather than "nan% of peak"."""
    return "" if math.isnan(peak) else f"{tflops / peak:.1%} of peak"


def unet_flops(unet, size: int, device: str) -> float:
    """FLOPs of one forward of `unet` (compiled or not) on one latent of a `size`-pixel image, counted by
    torch's FlopCounterMode.

    Attention runs on SDPA's math backend while counting: FlopCounterMode has formulas for the CUDA
    flash, memory-efficient and cuDNN kernels but none for the CPU flash kernel, whose products would
    go uncounted (SD1.5 at 512 px: 677 instead of 803 GFLOP). The math backend is plain matrix products,
    so every device counts the same FLOPs, equal to those of the classic attention processor."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    unet = getattr(unet, "_orig_mod", unet)
    lat = size // 8
    dtype = next(unet.parameters()).dtype
    x = torch.randn(1, unet.config.in_channels, lat, lat, device=device, dtype=dtype)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        unet(x, 10, encoder_hidden_states=ctx)
    return float(counter.get_total_flops())


def matmul_tflops(device: str, dtype) -> float:
    """Achieved TFLOP/s of a large square matrix product in `dtype`: what this GPU really reaches."""
    import torch
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 10 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e12


def spec_peak(name: str) -> float:
    """The dense fp16/bf16 peak of the card called `name` (torch's device name), by the first fragment of
    GPU_PEAK_TFLOPS it holds; NaN for a card the table lacks."""
    return next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), float("nan"))


def card_peak(device: str, dtype, out=print) -> tuple[float, float]:
    """(the card's dense peak for `dtype` from its spec, the measured matrix-product rate) in TFLOP/s,
    printed on one line; (NaN, NaN) off CUDA, and a NaN peak for a dtype other than fp16/bf16 (the spec
    table holds half-precision peaks only)."""
    if not device.startswith("cuda"):
        return float("nan"), float("nan")
    import torch

    from .devices import dtype_name

    name = torch.cuda.get_device_name(device)
    half = dtype in (torch.float16, torch.bfloat16)  # the table's peaks are half-precision ones
    peak = spec_peak(name) if half else float("nan")
    matmul = matmul_tflops(device, dtype)
    spec = (f"peak {peak:g} TFLOP/s (spec)" if half else
            "no spec peak listed (the table holds fp16/bf16 tensor-core peaks; % of peak needs fp16 or bf16)")
    out(f"{name}: dense {dtype_name(dtype)} {spec}, {matmul:.0f} TFLOP/s measured on an 8192^3 matrix product")
    return peak, matmul


def peak_memory(device: str, reset: bool = True) -> str:
    """Peak memory since `reset_peak_memory(device)`: allocated on that GPU, or the process's resident set.
    `reset`: what `reset_peak_memory` returned. Where the resident high-water mark could not be reset
    (it returned False, or off Linux) the figure is the process's peak so far, which may be an earlier
    row's, and the text says so."""
    import torch
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU"
    hwm = _resident_high_water()
    if hwm is not None:
        return f"{hwm / 2**30:.2f} GiB RSS" + ("" if reset else " (process peak so far: not reset)")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"{maxrss / 2**30:.2f} GiB RSS (process peak so far)"


CLEAR_REFS = "/proc/self/clear_refs"  # Linux: writing 5 resets the resident set's high-water mark (VmHWM)


def reset_peak_memory(device: str) -> bool:
    """Starts a new peak for `peak_memory(device, reset=...)`; False where the CPU's resident high-water
    mark could not be reset (no /proc/self/clear_refs, or a kernel or container that refuses the write)."""
    import torch
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _resident_high_water() -> int | None:
    """VmHWM in bytes (Linux), None where /proc does not give it."""
    try:
        with open("/proc/self/status") as f:
            found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None
