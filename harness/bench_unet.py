"""The UNet alone: how close one denoising forward comes to the card's dense peak, and what bounds it.

`harness bench-unet` builds a UNet with random weights from a built-in config (`sd15`: SD v1.5's
shapes; `sd2`: SD v2's; `tiny`: the built-in test model; nothing is downloaded) and prints:

- its FLOPs per latent (torch's FlopCounterMode);
- per mode (eager, `torch.compile`, compile with Inductor freezing, compile with CUDA graphs): milliseconds
  per forward at the batch (latents: a guided batch of B images is 2B latents), TFLOP/s and the share of
  the dense peak (compiled modes keep the up blocks' skip connections channels_last on CUDA, as the
  runner compiles the UNet: layouts.py);
- on CUDA, where the compiled forward's GPU time goes (attention, convolutions, matrix products,
  fused element-wise and normalisation kernels);
- every self-attention shape of the UNet timed alone, next to the same FLOPs in 64-wide heads, and
  what the compiled forward would reach if every self-attention ran at the 64-wide rate.

The last line tells whether a target share of the peak is reachable by tuning the rest of the
network, or bounded by the model's own attention shapes (SD v1's heads are 40, 80 and 160 wide).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from .measure import card_peak, cuda_event, percent_of_peak, unet_flops

MODELS = ("sd15", "sd2", "tiny")
MODES = ("eager", "compile", "freezing", "cudagraphs")


@dataclass(frozen=True)
class AttentionShape:
    tokens: int      # query and key length (self-attention)
    heads: int
    head_dim: int
    count: int       # how many self-attentions of this shape one forward runs

    def flops(self, latents: int) -> float:
        """QK^T and attention x V: 2 products of 2 * tokens^2 * head_dim multiply-adds per head."""
        return 4.0 * latents * self.heads * self.tokens ** 2 * self.head_dim


def unet_config(model: str) -> dict:
    from .tiny import SD2_UNET, SD15_UNET, TINY_UNET
    if model == "sd15":
        return dict(SD15_UNET)
    if model == "sd2":  # SD v2: 64-wide heads at every level, linear projections, 1024-wide text
        return dict(SD2_UNET)
    if model == "tiny":
        return dict(TINY_UNET)
    raise ValueError(f"--model {model!r}: expected one of {', '.join(MODELS)}")


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def attention_shapes(cfg: dict, latent: int) -> list[AttentionShape]:
    """The self-attention shapes of a diffusers UNet2DConditionModel config at a latent side, largest first.
    As diffusers does, `num_attention_heads` falls back to `attention_head_dim` (SD v1 and v2 configs
    name their head counts so)."""
    channels = list(cfg["block_out_channels"])
    levels = len(channels)
    heads = _per_level(cfg.get("num_attention_heads") or cfg["attention_head_dim"], levels)
    layers = _per_level(cfg.get("layers_per_block", 2), levels)
    depth = _per_level(cfg.get("transformer_layers_per_block", 1), levels)
    counts = [0] * levels
    for i, kind in enumerate(cfg["down_block_types"]):
        if "CrossAttn" in kind:
            counts[i] += layers[i] * depth[i]
    for j, kind in enumerate(cfg["up_block_types"]):
        level = levels - 1 - j
        if "CrossAttn" in kind:
            counts[level] += (layers[level] + 1) * depth[level]
    if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        counts[-1] += depth[-1]
    return [AttentionShape(tokens=(latent >> i) ** 2, heads=heads[i], head_dim=channels[i] // heads[i], count=c)
            for i, c in enumerate(counts) if c]


def _timer(device: str):
    """Seconds per call of fn, `iters` times after 3 warm-ups: CUDA events on a GPU (no host gaps
    counted), the wall clock elsewhere. The events are recorded on `device`'s stream and that card is
    synchronised, so `cuda:1` is timed on cuda:1, not on the current card."""
    import torch

    def measure(fn, iters: int) -> float:
        with torch.no_grad():
            for _ in range(3):
                fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
                start = cuda_event(device)
                for _ in range(iters):
                    fn()
                end = cuda_event(device)
                torch.cuda.synchronize(device)
                return start.elapsed_time(end) / 1000 / iters
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t0) / iters
    return measure


def time_candidate(run, exact, measure, iters: int) -> tuple[float, float] | str:
    """(seconds per call, largest difference from `exact`) of one configuration of a hand-written kernel
    (experiments/gpu), or why it did not run: a configuration the card cannot hold (shared memory,
    registers) fails when it compiles or launches, and is named rather than stopping the sweep."""
    import torch

    try:
        with torch.no_grad():
            diff = (run().float() - exact).abs().max().item()
        return measure(run, iters), diff
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:80]}"


def kernel_classes(profile_events) -> dict[str, float]:
    """GPU microseconds by kind of kernel, from torch.profiler key averages."""
    out: dict[str, float] = {}
    for ev in profile_events:
        name = ev.key.lower()
        kind = ("fused element-wise and norms (Triton)" if name.startswith("triton") else
                "attention" if any(w in name for w in ("sdpa", "fmha", "flash", "attention")) else
                "convolution" if any(w in name for w in ("fprop", "conv", "implicit_gemm")) else
                "matrix products" if any(w in name for w in ("nvjet", "gemm", "cutlass", "sm90_", "sm80_")) else
                "other")
        out[kind] = out.get(kind, 0.0) + ev.self_device_time_total
    return out


def run(model: str = "sd15", *, device: str = "cuda", dtype: str = "auto", batch: int = 32, size: int = 512,
        modes: tuple[str, ...] | None = None, speedups: tuple[str, ...] = ("channels_last", "fuse_qkv"),
        iters: int = 10, out=print) -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from .devices import dtype_name, pick_device, pick_dtype
    from .layouts import channels_last_skips

    diffusers_logging.set_verbosity_error()  # casting random weights to fp16 is intended here
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    modes = tuple(dict.fromkeys(modes or (("eager", "compile") if device.startswith("cuda") else ("eager",))))
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if "cudagraphs" in modes and not device.startswith("cuda"):
        raise ValueError(f"mode 'cudagraphs' needs a CUDA device, not {device}")
    cfg = unet_config(model)
    latent = size // 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(device, torch_dtype).eval().requires_grad_(False)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, cfg["in_channels"], latent, latent, device=device, dtype=torch_dtype, generator=gen)
    ctx = torch.randn(batch, 77, cfg["cross_attention_dim"], device=device, dtype=torch_dtype, generator=gen)
    t = torch.tensor(500, device=device)
    flop = unet_flops(unet, size, device)
    peak, _ = card_peak(device, torch_dtype, out)
    out(f"UNet {model} (random weights) at {size}x{size}: {flop / 1e9:.3g} GFLOP per latent; batch {batch} "
        f"latents, {dtype_name(torch_dtype)}, {device}, speedups: {', '.join(speedups) or 'none'}")
    if "channels_last" in speedups:
        unet.to(memory_format=torch.channels_last)
    if "fuse_qkv" in speedups:
        unet.fuse_qkv_projections()
    measure = _timer(device)

    def share(tflops: float) -> str:
        text = percent_of_peak(tflops, peak)
        return f" ({text})" if text else ""

    figures: dict = {"gflop_per_latent": flop / 1e9, "modes": {}, "peak": peak}
    splits: dict[str, tuple[dict[str, float], list[str]]] = {}
    for mode in modes:
        hooks = [] if mode == "eager" else channels_last_skips(unet)  # as the runner compiles it
        forward = unet if mode == "eager" else _compiled(unet, mode)
        wall = time.perf_counter()
        sec = measure(lambda f=forward: f(x, t, encoder_hidden_states=ctx), iters)
        tflops = flop * batch / sec / 1e12
        figures["modes"][mode] = {"ms": sec * 1e3, "tflops": tflops}
        out(f"{mode:<9} {sec * 1e3:8.1f} ms per forward  {tflops:7.4g} TFLOP/s{share(tflops)}"
            f"  (measured in {time.perf_counter() - wall:.0f} s{'' if mode == 'eager' else ', compiling included'})")
        if device.startswith("cuda"):  # profiled now: the next mode's compile resets this one's
            lines: list[str] = []
            splits[mode] = (_kernel_split(mode, lambda f=forward: f(x, t, encoder_hidden_states=ctx),
                                          lines.append, device), lines)
        for hook in hooks:
            hook.remove()
    if "freezing" in modes:
        _inductor_config().freezing = False  # compiled on its first call, above; later compiles unfrozen
    best, fastest = min(figures["modes"].items(), key=lambda kv: kv[1]["ms"])
    if best in splits:
        figures["kernel_ms"], lines = splits[best]
        for line in lines:
            out(line)
    saved = sum(_attention_row(shape, batch, device, torch_dtype, measure, iters, out)
                for shape in attention_shapes(cfg, latent))
    if saved:
        ms = fastest["ms"] - saved * 1e3
        tflops = flop * batch / (ms / 1e3) / 1e12
        figures["with_64_wide_attention"] = {"ms": ms, "tflops": tflops}
        out(f"{best} forward if every self-attention ran at the 64-wide rate: {ms:.1f} ms, "
            f"{tflops:.4g} TFLOP/s{share(tflops)}")
    out(f"best: {best} {fastest['tflops']:.4g} TFLOP/s{share(fastest['tflops'])}")
    return figures


def _inductor_config():
    import torch._inductor.config as config
    return config


def _compiled(unet, mode: str):
    """The UNet under torch.compile: plain, with Inductor freezing, or with CUDA graphs (each call marks a
    new step, as a denoising loop does, so a replay may reuse the last one's output buffers)."""
    import torch

    torch._dynamo.reset()
    _inductor_config().freezing = mode == "freezing"  # read when the first call compiles
    if mode != "cudagraphs":
        return torch.compile(unet)
    compiled = torch.compile(unet, mode="reduce-overhead")

    def forward(*args, **kw):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args, **kw)
    return forward


def _kernel_split(mode: str, forward, out, device: str) -> dict[str, float]:
    """Milliseconds of GPU time per kind of kernel in one forward on `device` (torch.profiler); that card
    is synchronised before the profile is read."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize(device)
    kinds = {k: v / 1e3 for k, v in kernel_classes(prof.key_averages()).items()}
    total = sum(kinds.values()) or 1.0
    out(f"GPU time of one {mode} forward: " + ", ".join(
        f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    return kinds


def _attention_row(shape: AttentionShape, batch: int, device: str, dtype, measure, iters: int, out) -> float:
    """Times one self-attention shape alone and, when its width allows, the same FLOPs in 64-wide
    heads; prints both and returns the seconds per forward the 64-wide rate would save."""
    import torch
    import torch.nn.functional as F

    def attend(heads: int, dim: int) -> float:
        q, k, v = (torch.randn(batch, heads, shape.tokens, dim, device=device, dtype=dtype) for _ in range(3))
        return measure(lambda: F.scaled_dot_product_attention(q, k, v), iters)

    def rate(sec: float) -> str:
        return f"{sec * 1e3:7.3f} ms, {shape.flops(batch) / sec / 1e12:6.4g} TFLOP/s"

    sec = attend(shape.heads, shape.head_dim)
    line = f"self-attention {shape.tokens:5d} tokens x {shape.heads} heads of {shape.head_dim:3d} (x{shape.count}): {rate(sec)}"
    width, saved = shape.heads * shape.head_dim, 0.0
    if shape.head_dim != 64 and width % 64 == 0:
        wide = attend(width // 64, 64)
        saved = shape.count * max(sec - wide, 0.0)
        line += f"; as {width // 64} head{'s' if width > 64 else ''} of 64: {rate(wide)}"
    out(line)
    return saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="harness bench-unet", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd15", choices=MODELS, help="UNet config, random weights (default sd15)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--batch", type=int, default=32, help="latents per forward (default 32: 16 guided images)")
    p.add_argument("--size", type=int, default=512, help="image side in px; the latent is size/8 (default 512)")
    p.add_argument("--modes", default="", help=f"comma list of {', '.join(MODES)} (default: eager,compile on "
                                               "CUDA, eager elsewhere)")
    p.add_argument("--speedups", default="channels_last,fuse_qkv",
                   help="comma list of channels_last, fuse_qkv; 'none' for neither (default both)")
    p.add_argument("--iters", type=int, default=10, help="timed forwards per mode (default 10)")
    a = p.parse_args(argv)
    modes = tuple(m for m in a.modes.split(",") if m)
    speedups = tuple(s for s in a.speedups.split(",") if s and s != "none")
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: {m!r} is not one of {', '.join(MODES)}")
    for s in speedups:
        if s not in ("channels_last", "fuse_qkv"):
            p.error(f"--speedups: {s!r} is not one of channels_last, fuse_qkv")
    for name in ("batch", "iters"):
        if getattr(a, name) < 1:
            p.error(f"--{name} {getattr(a, name)}: expected at least 1")
    if a.size < 64 or a.size % 64:
        p.error(f"--size {a.size}: expected a multiple of 64, at least 64")
    from .core import SettingsError

    try:
        run(a.model, device=a.device, dtype=a.dtype, batch=a.batch, size=a.size, modes=modes or None,
            speedups=speedups, iters=a.iters)
    except SettingsError as exc:  # a device or dtype this machine does not have
        p.error(f"--device/--dtype: {exc}")
    except ValueError as exc:  # a mode the device cannot run
        p.error(f"--modes: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
