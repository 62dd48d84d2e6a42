"""The GEGLU feed-forward projections of an SD UNet: geglu_kernel.py's Triton kernel against the compiled module.

Usage (on a CUDA machine, from the repository root):
    python3 experiments/gpu/geglu.py [--model sd15] [--batch 32] [--configs all|default] [--unet]

For each feed-forward width of the model at a 64x64 latent (SD1.5: 320, 640 and 1280 wide, at 4096,
1024, 256 and 64 tokens), it times diffusers' GEGLU module compiled (`torch.compile`: a cuBLAS product
writing both halves, then Inductor's element-wise gate) and the kernel under each (BLOCK_M, BLOCK_N,
BLOCK_K, GROUP_M, warps, stages) of the grid, in fp16, and prints each one's largest difference from
the projection and gate computed in fp32, next to the compiled module's own. The fastest configuration
of each width is kept for it (`TUNED`; a width met again, SD1.5's 1280 at 64 tokens, is timed with the one
its first shape chose), then checked again in bf16. It ends with the milliseconds per UNet
forward both ways (each shape times how many transformer blocks run at it) and what the kernel saves.
With `--unet` it then compiles the UNet (random weights, as `harness bench-unet` builds it) with the
skip-connection layout alone, with the kernel, and with the kernel and the narrow-head attention kernel,
in this process (`unet_variants.py --variants skips,geglu,kernels`).
"""

from __future__ import annotations

import argparse
import itertools
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd15", choices=("sd15", "sd2"))
    p.add_argument("--batch", type=int, default=32, help="latents (a guided batch of B images is 2B)")
    p.add_argument("--configs", default="all", choices=("all", "default"),
                   help="all: the grid of configurations; default: CONFIG alone")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--unet", action="store_true")
    p.add_argument("--device", default="cuda",
                   help="cuda; cpu runs the kernel in Triton's interpreter (TRITON_INTERPRET=1), to try the script")
    a = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from diffusers.models.activations import GEGLU

    import geglu_kernel as kernel
    from harness.bench_unet import _timer, attention_shapes, time_candidate, unet_config

    measure = _timer(a.device)
    gen = torch.Generator(a.device).manual_seed(0)
    cfg = unet_config(a.model)
    shapes = [(s.tokens, s.heads * s.head_dim, s.count) for s in attention_shapes(cfg, 64)]
    grid = ([kernel.CONFIG] if a.configs == "default" else
            [c for c in itertools.product((64, 128, 256), (64, 128), (32, 64), (8,), (4, 8), (3, 4))
             if 2 * c[0] * c[1] <= 128 * 32 * c[4]])  # two fp32 accumulators in at most 128 registers a thread
    card = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else a.device
    print(f"torch {torch.__version__}, {card}; {a.model}, {a.batch} latents; "
          f"{len(grid)} configurations", flush=True)
    totals = {"compiled": 0.0, "kernel": 0.0}
    for dtype in (torch.float16, torch.bfloat16):
        for tokens, dim, count in shapes:
            torch.manual_seed(0)
            module = GEGLU(dim, 4 * dim).to(a.device, dtype).eval().requires_grad_(False)
            x = torch.randn(a.batch, tokens, dim, device=a.device, dtype=dtype, generator=gen)
            w, b = module.proj.weight, module.proj.bias
            flop = 2.0 * x.shape[0] * tokens * dim * w.shape[0]
            label = f"{str(dtype)[6:]:<8} {tokens:>4} tokens, {dim:>4} -> 2 x {4 * dim:<5}"
            with torch.no_grad():
                value, gate = F.linear(x.float(), w.float(), b.float()).chunk(2, dim=-1)
                exact = value * F.gelu(gate)
            torch._dynamo.reset()  # each shape compiled afresh, never against the recompile limit
            compiled = torch.compile(module)
            with torch.no_grad():
                diff = (compiled(x).float() - exact).abs().max().item()
            base = measure(lambda: compiled(x), a.iters)
            print(f"{label} compiled module {'':<26} {base * 1e3:7.3f} ms {flop / base / 1e12:6.1f} TFLOP/s  "
                  f"max |diff| from fp32 {diff:.2e}", flush=True)

            def timed(config):
                got = time_candidate(lambda: kernel.launch(x, w, b, config=config), exact, measure, a.iters)
                if isinstance(got, str):
                    print(f"{label} {config}: {got}")
                    return float("inf")
                sec, diff = got
                print(f"{label} kernel {str(config):<33} {sec * 1e3:7.3f} ms {flop / sec / 1e12:6.1f} TFLOP/s  "
                      f"max |diff| from fp32 {diff:.2e}", flush=True)
                return sec

            key = (dim, 4 * dim)  # (K, N): shapes of one width share a configuration, the first's
            if dtype == torch.float16:
                tried = [kernel.TUNED[key]] if key in kernel.TUNED else grid
                best, config = min((timed(c), c) for c in tried)
                kernel.TUNED.setdefault(key, config)
                print(f"{label} fastest: {config}, {base / best:.2f}x the compiled module; x{count} per forward: "
                      f"{count * base * 1e3:.2f} ms against {count * best * 1e3:.2f} ms", flush=True)
                totals["compiled"] += count * base
                totals["kernel"] += count * best
            else:
                timed(kernel.TUNED[key])
    print(f"per UNet forward (fp16): {totals['compiled'] * 1e3:.2f} ms compiled, {totals['kernel'] * 1e3:.2f} ms "
          f"with the kernel, {1e3 * (totals['compiled'] - totals['kernel']):.2f} ms saved", flush=True)
    if not a.device.startswith("cuda"):  # the interpreter's kernels cannot be traced into a compiled graph
        return 0
    op = kernel.op()
    compiled = torch.compile(lambda x, w, b: op(x, w, b))
    x = torch.randn(2, 1024, 320, device=a.device, dtype=torch.float16, generator=gen)
    module = GEGLU(320, 1280).to(a.device, torch.float16).requires_grad_(False)
    with torch.no_grad():
        same = torch.equal(compiled(x, module.proj.weight, module.proj.bias),
                           kernel.launch(x, module.proj.weight, module.proj.bias))
    print(f"compiled op gives the eager launch's values: {same}", flush=True)
    if a.unet:
        import unet_variants
        print(f"UNet with TUNED = {kernel.TUNED}", flush=True)
        return unet_variants.main(["--model", a.model, "--variants", "skips,geglu,kernels", "--top", "12",
                                   "--batch", str(a.batch)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
