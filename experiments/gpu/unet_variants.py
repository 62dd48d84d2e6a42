"""The compiled SD UNet under Inductor settings, each timed in one process, and the kernels of the first.

Usage (on a CUDA machine, from the repository root):
    python3 experiments/gpu/unet_variants.py [--model sd15] [--variants skips,base] [--top 30]

Variants (an Inductor setting applied while the UNet compiles; the model is built once, with
channels_last and fused QKV projections as `harness bench-unet` builds it):
    base   plain torch.compile, without the harness's skip-connection layout
    cdt    coordinate-descent tuning of the generated element-wise and reduction kernels
    gemm   matrix products autotuned among Triton templates and cuBLAS, element-wise tails fused into them
    mm     gemm with the convolutions left to cuDNN (no convolution templates to compile and time)
    nocl   plain torch.compile of the UNet left in the contiguous layout
    nd     element-wise kernels tiled in two dimensions wherever Inductor can (coalesced layout changes)
    ndcdt  nd and cdt together
    skips  up-block resnets take their input through an opaque channels_last copy, as the harness runner
           compiles the UNet (harness/layouts.py)
    narrow skips, and SD v1's 40-wide self-attention heads through a Triton kernel that splits them
           into 32 + 16 instead of padding them to 64 (narrow_heads_kernel.py)
    geglu  skips, and each feed-forward's GEGLU projection through a Triton kernel that gates it in its
           epilogue, writing half the columns (geglu_kernel.py)
    kernels  skips, narrow and geglu together
    cat    concatenations as copies into one buffer, never as masked element-wise loads (a buffer
           that takes its inputs' channels_last layout)

For the first variant it lists the `--top` kernels of one forward by GPU time (name, calls, ms), the
figures behind `harness bench-unet`'s split by kind of kernel.
"""

from __future__ import annotations

import argparse
import sys
import time

VARIANTS = {
    "base": {},
    "cdt": {"coordinate_descent_tuning": True},
    "gemm": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON,ATEN"},
    "mm": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON,ATEN",
           "max_autotune_conv_backends": "ATEN"},
    "nocl": {},
    "nd": {"triton.prefer_nd_tiling": True},
    "ndcdt": {"triton.prefer_nd_tiling": True, "coordinate_descent_tuning": True},
    "cat": {"max_pointwise_cat_inputs": 1, "max_complex_pointwise_cat_inputs": 1},
    "skips": {},
    "narrow": {},
    "geglu": {},
    "kernels": {},
}



def top_kernels(forward, device: str, top: int, out=print) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize(device)
    rows = sorted(prof.key_averages(), key=lambda ev: -ev.self_device_time_total)
    total = sum(ev.self_device_time_total for ev in rows) or 1.0
    out(f"one forward: {total / 1e3:.1f} ms of kernels")
    for ev in rows[:top]:
        out(f"{ev.self_device_time_total / 1e3:7.2f} ms {ev.self_device_time_total / total:6.1%} "
            f"x{ev.count:<4d} {ev.key[:110]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd15", choices=("sd15", "sd2"))
    p.add_argument("--variants", default="skips,base")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    for name in names:
        if name not in VARIANTS:
            p.error(f"--variants: {name!r} is not one of {', '.join(VARIANTS)}")

    import torch
    import torch._inductor.config as inductor
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from harness.bench_unet import _timer, unet_config
    from harness.layouts import channels_last_skips
    from harness.measure import card_peak, percent_of_peak, unet_flops

    diffusers_logging.set_verbosity_error()
    device, dtype = "cuda", torch.float16
    cfg = unet_config(a.model)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(device, dtype).eval().requires_grad_(False)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(a.batch, 4, 64, 64, device=device, dtype=dtype, generator=gen)
    ctx = torch.randn(a.batch, 77, cfg["cross_attention_dim"], device=device, dtype=dtype, generator=gen)
    t = torch.tensor(500, device=device)
    flop = unet_flops(unet, 512, device)
    peak, _ = card_peak(device, dtype, print)
    unet.fuse_qkv_projections()
    measure = _timer(device)
    print(f"{a.model}: {flop / 1e9:.4g} GFLOP per latent, batch {a.batch}, torch {torch.__version__}", flush=True)
    with torch.no_grad():
        reference = unet(x, t, encoder_hidden_states=ctx).sample
    for i, name in enumerate(names):
        unet.to(memory_format=torch.contiguous_format if name == "nocl" else torch.channels_last)
        torch._dynamo.reset()
        hooks = channels_last_skips(unet) if name in ("skips", "narrow", "geglu", "kernels") else []
        processors = unet.attn_processors
        if name in ("narrow", "kernels"):
            from narrow_heads_kernel import narrow_heads  # beside this script
            print(f"{name}: {narrow_heads(unet)} self-attentions through the narrow-head kernel", flush=True)
        if name in ("geglu", "kernels"):
            from geglu_kernel import geglu
            print(f"{name}: {geglu(unet)} GEGLU projections through the kernel", flush=True)
        compiled = torch.compile(unet)

        def forward(f=compiled):
            return f(x, t, encoder_hidden_states=ctx)

        known = inductor.get_config_copy()
        settings = {k: v for k, v in VARIANTS[name].items() if k in known}
        if len(settings) < len(VARIANTS[name]):
            print(f"{name}: this torch has no {', '.join(sorted(set(VARIANTS[name]) - set(settings)))}")
        wall = time.perf_counter()
        with inductor.patch(settings), torch.no_grad():
            got = forward().sample  # compiles under the variant's settings
        compile_s = time.perf_counter() - wall
        sec = measure(forward, a.iters)
        tflops = flop * a.batch / sec / 1e12
        diff = (got.float() - reference.float()).abs().max().item()
        print(f"{name:<5} {sec * 1e3:7.2f} ms per forward {tflops:6.4g} TFLOP/s ({percent_of_peak(tflops, peak)}); "
              f"compiled in {compile_s:.0f} s; max |diff| from eager {diff:.3g}", flush=True)
        if i == 0 and a.top:
            top_kernels(forward, device, a.top)
        for hook in hooks:
            hook.remove()
        unet.set_attn_processor(processors)
        if name in ("geglu", "kernels"):
            from geglu_kernel import unroute
            unroute(unet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
