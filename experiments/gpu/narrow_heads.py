"""SD v1's 40-wide self-attention heads: narrow_heads_kernel.py's Triton kernel against SDPA, then in the UNet.

Usage (on a CUDA machine, from the repository root):
    python3 experiments/gpu/narrow_heads.py [--batch 32] [--tokens 4096] [--configs all|default] [--unet]

It times SDPA (PyTorch's default choice of kernel) and the kernel under each (BLOCK_M, BLOCK_N, warps,
stages) of the grid on the shape of SD1.5's 64x64 self-attentions (8 heads of 40; queries, keys and
values read from one fused projection, as the harness runs them), and prints each one's largest
difference from attention computed in fp32, next to SDPA's own; then the fastest configuration with each
row's sum taken from the probabilities instead of a column of ones, with exponentials in fp32, and in
bf16. With `--unet` it then compiles SD1.5's UNet (random weights, as `harness bench-unet` builds it)
with and without the kernel, under the fastest configuration, in this process (`unet_variants.py
--variants skips,narrow`).
"""

from __future__ import annotations

import argparse
import itertools
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--configs", default="all", choices=("all", "default"),
                   help="all: the grid of (BLOCK_M, BLOCK_N, warps, stages); default: CONFIG alone")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--unet", action="store_true")
    a = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import narrow_heads_kernel as attention
    from harness.bench_unet import _timer, time_candidate

    heads, d = 8, 40
    gen = torch.Generator("cuda").manual_seed(0)
    measure = _timer("cuda")
    flop = 4.0 * a.batch * heads * a.tokens ** 2 * d
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; {a.batch} x {a.tokens} tokens, "
          f"{heads} heads of {d}: {flop / 1e9:.0f} GFLOP", flush=True)
    grid = ([attention.CONFIG] if a.configs == "default" else
            list(itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))))
    for dtype in (torch.float16, torch.bfloat16):
        qkv = torch.randn(a.batch, a.tokens, 3 * heads * d, device="cuda", dtype=dtype, generator=gen)
        q, k, v = qkv.chunk(3, dim=-1)

        def split(x):
            return x.view(a.batch, -1, heads, d).transpose(1, 2)

        def sdpa(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(q.shape)

        with torch.no_grad():
            exact = sdpa(q.float(), k.float(), v.float())
            diff = (sdpa().float() - exact).abs().max().item()
        sec = measure(sdpa, a.iters)
        print(f"{str(dtype):<15} SDPA {'':<26} {sec * 1e3:7.3f} ms {flop / sec / 1e12:6.1f} TFLOP/s  "
              f"max |diff| from fp32 {diff:.2e}", flush=True)

        def timed(config, fast, ones):
            got = time_candidate(lambda: attention.launch(q, k, v, heads, config=config, fast=fast, ones=ones),
                                 exact, measure, a.iters)
            if isinstance(got, str):
                print(f"{str(dtype):<15} {config}: {got}")
                return float("inf")
            sec, diff = got
            print(f"{str(dtype):<15} {str(config):<18} {'f16x2' if fast else 'fp32 '} {'ones' if ones else 'sum '} "
                  f"{sec * 1e3:7.3f} ms {flop / sec / 1e12:6.1f} TFLOP/s  max |diff| from fp32 {diff:.2e}", flush=True)
            return sec

        if dtype == torch.float16:  # the grid, then the fastest with each row's sum from the probabilities and fp32 exponentials
            attention.CONFIG = min((timed(c, True, True), c) for c in grid)[1]
            print(f"{str(dtype):<15} fastest: {attention.CONFIG}", flush=True)
            timed(attention.CONFIG, True, False)
        timed(attention.CONFIG, False, True)
    op = attention.op()
    compiled = torch.compile(lambda q, k, v: op(q, k, v, heads))
    qkv = torch.randn(2, 1024, 3 * heads * d, device="cuda", dtype=torch.float16, generator=gen)
    q, k, v = qkv.chunk(3, dim=-1)
    same = torch.equal(compiled(q, k, v), attention.launch(q, k, v, heads))
    print(f"compiled op gives the eager launch's values: {same}", flush=True)
    if a.unet:
        import unet_variants
        print(f"UNet with CONFIG = {attention.CONFIG}", flush=True)
        return unet_variants.main(["--variants", "skips,narrow", "--top", "12", "--batch", str(a.batch)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
