"""The narrow-head attention kernel of experiments/gpu (README: "How close the UNet comes to the peak"),
run by Triton's interpreter on CPU tensors: its values against SDPA's, and the processor that routes a
diffusers attention through it. Triton takes its interpreted mode when it is first imported, so the
checks run in a fresh process (`probe`) and the tests read what it found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
GPU_DIR = HERE.parent / "experiments" / "gpu"
CASES = {  # tokens, keys, head width, dtype, tolerance against fp32 attention
    "sd1-width, partial query block": (200, 200, 40, "float16", 2e-3),
    "keys not a multiple of the key block": (96, 77, 40, "float16", 2e-3),
    "width 24": (130, 130, 24, "float16", 2e-3),
    "width 48, fp32": (64, 64, 48, "float32", 1e-5),
}


def probe() -> dict:
    """Everything the tests check, computed in this (interpreted) process."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    import narrow_heads_kernel as nh

    found: dict = {"split": {w: nh.split_width(w) for w in (8, 16, 24, 32, 40, 48, 63, 64, 80)}}
    try:
        z = torch.zeros(1, 4, 64)
        nh.launch(z, z, z, 2)
    except ValueError as exc:
        found["width 32"] = str(exc)

    def reference(q, k, v, heads):
        b, d = q.shape[0], q.shape[-1] // heads

        def split(x):
            return x.float().reshape(b, -1, heads, d).transpose(1, 2)
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, -1, heads * d)

    found["kernel"] = {}
    for name, (tokens, keys, width, dtype, _) in CASES.items():
        heads, dtype = 2, getattr(torch, dtype)
        gen = torch.Generator().manual_seed(tokens + width)
        q = torch.randn(2, tokens, 3 * heads * width, generator=gen).to(dtype).chunk(3, dim=-1)[0]
        _, k, v = torch.randn(2, keys, 3 * heads * width, generator=gen).to(dtype).chunk(3, dim=-1)
        for ones in (True, False):
            out = nh.launch(q, k, v, heads, config=(64, 32, 4, 2), ones=ones)
            found["kernel"][f"{name}, ones={ones}"] = {
                "row stride": q.stride(1), "shape": list(out.shape) == list(q.shape), "dtype": out.dtype == dtype,
                "diff": (out.float() - reference(q, k, v, heads)).abs().max().item()}

    found["processor"] = {}
    for fused in (False, True):
        torch.manual_seed(0)
        attn = Attention(query_dim=80, heads=2, dim_head=40).eval()
        other = Attention(query_dim=64, heads=2, dim_head=32).eval()  # 32-wide heads: not routed
        cross = Attention(query_dim=80, cross_attention_dim=16, heads=2, dim_head=40).eval()
        if fused:
            attn.fuse_projections()
        model = torch.nn.ModuleDict({"self": attn, "other": other, "cross": cross})
        x, ctx = torch.randn(2, 96, 80), torch.randn(2, 7, 80)
        with torch.no_grad():
            expected = attn(x)
            routed = [nh.narrow_heads(model), nh.narrow_heads(model)]
            processor = attn.processor
            row = {"routed": routed,
                   "kinds": [type(m.processor).__name__ for m in (attn, other, cross)],
                   "inner": type(processor.inner).__name__,
                   "cpu falls back": torch.equal(attn(x), expected),
                   "cross falls back": torch.equal(attn(x, ctx), AttnProcessor2_0()(attn, x, ctx))}
            processor.servable = lambda *args: True  # as on CUDA: through the kernel (interpreted)
            got = attn(x)
        row["kernel ran"] = not torch.equal(got, expected)  # another summation order
        row["diff"] = (got - expected).abs().max().item()
        found["processor"][str(fused)] = row
    return found


@pytest.fixture(scope="module")
def found() -> dict:
    code = "import json, sys; sys.path[:0] = sys.argv[1:]; import test_narrow_heads as t; print(json.dumps(t.probe()))"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(HERE), str(GPU_DIR)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_split_width_serves_widths_between_powers_of_two(found):
    split = {int(w): tuple(p) if p else None for w, p in found["split"].items()}
    assert split == {8: None, 16: None, 24: (16, 16), 32: None, 40: (32, 16), 48: (32, 32), 63: (32, 32),
                     64: None, 80: None}  # 48 as 32 + 16 would leave no padding column for the ones
    assert "heads 32 wide are not served" in found["width 32"]


@pytest.mark.parametrize("ones", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_attention_on_fused_projections(found, case, ones):
    tokens, keys, width, dtype, tol = CASES[case]
    row = found["kernel"][f"{case}, ones={ones}"]
    assert row["row stride"] == 3 * 2 * width  # read in place, where the fused QKV projection wrote them
    assert row["shape"] and row["dtype"]
    assert row["diff"] < tol


@pytest.mark.parametrize("fused", [False, True])
def test_processor_routes_self_attention_and_leaves_the_rest(found, fused):
    row = found["processor"][str(fused)]
    assert row["routed"] == [1, 0]  # the 40-wide self-attention, once
    assert row["kinds"] == ["NarrowHeads", "AttnProcessor2_0", "AttnProcessor2_0"]
    assert row["inner"] == "AttnProcessor2_0"
    assert row["cpu falls back"] and row["cross falls back"]
    assert row["kernel ran"] and row["diff"] < 1e-5
