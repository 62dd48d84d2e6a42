"""The GEGLU projection kernel of experiments/gpu (README: "How close the UNet comes to the peak"), run by
Triton's interpreter on CPU tensors: its values against the projection and gate computed in fp32, and the
routing of a diffusers UNet's GEGLU modules through it. Triton takes its interpreted mode when it is first
imported, so the checks run in a fresh process (`probe`) and the tests read what it found. (The
interpreter's bf16 products are wrong, so bf16 is checked on a card, by geglu.py.)"""

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
CASES = {  # rows per latent, K, N (each half), bias, dtype, config (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages)
    "partial tiles, groups of row tiles": (200, 64, 48, True, "float16", (32, 32, 32, 4, 4, 2)),
    "K not a multiple of BLOCK_K": (96, 40, 32, True, "float16", (64, 16, 32, 2, 4, 2)),
    "no bias": (64, 64, 32, False, "float16", (32, 32, 32, 8, 4, 2)),
    "fp32": (77, 40, 40, True, "float32", (32, 16, 16, 2, 4, 2)),
}


def probe() -> dict:
    """Everything the tests check, computed in this (interpreted) process."""
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention import FeedForward

    import geglu_kernel as gk

    found: dict = {"kernel": {}}
    for name, (tokens, k, n, bias, dtype, config) in CASES.items():
        dtype = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(tokens + k)
        # the rows of a wider tensor, as a slice leaves them: evenly strided, not contiguous
        x = torch.randn(2, tokens, k + 8, generator=gen).to(dtype)[..., :k]
        w = (torch.randn(2 * n, k, generator=gen) / k ** 0.5).to(dtype)
        b = torch.randn(2 * n, generator=gen).to(dtype) if bias else None
        value, gate = F.linear(x.float(), w.float(), None if b is None else b.float()).chunk(2, dim=-1)
        exact = value * F.gelu(gate)
        value, gate = F.linear(x, w, b).chunk(2, dim=-1)  # as diffusers' GEGLU computes it
        out = gk.launch(x, w, b, config=config)
        found["kernel"][name] = {
            "shape": list(out.shape), "dtype": out.dtype == dtype, "contiguous input": x.is_contiguous(),
            "diff": (out.float() - exact).abs().max().item(), "scale": exact.abs().max().item(),
            "module diff": ((value * F.gelu(gate)).float() - exact).abs().max().item()}
    try:
        gk.launch(torch.zeros(3, 8), torch.zeros(10, 6))
    except ValueError as exc:
        found["mismatch"] = str(exc)

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"geglu": FeedForward(64, activation_fn="geglu"),
                                 "gelu": FeedForward(64, activation_fn="gelu")}).eval()
    x = torch.randn(2, 50, 64).half()
    model.half()
    with torch.no_grad():
        expected = model["geglu"](x)
        row = {"routed": [gk.geglu(model), gk.geglu(model)],
               "kinds": [type(m).__name__ for m in model.modules() if "GEGLU" in type(m).__name__ or
                         type(m).__name__ == "GELU"],
               "cpu falls back": torch.equal(model["geglu"](x), expected)}
        serve = gk.servable
        gk.servable = lambda *args: True  # as on CUDA: through the kernel (interpreted)
        got = model["geglu"](x)
        gk.servable = serve
        row["kernel ran"] = not torch.equal(got, expected)  # fp32 gate: other last bits
        row["diff"] = (got.float() - expected.float()).abs().max().item()
        row["scale"] = expected.abs().max().item()
        row["unrouted"] = [gk.unroute(model), gk.unroute(model)]
        row["own forward again"] = torch.equal(model["geglu"](x), expected)
        row["kinds after"] = sorted({type(m).__name__ for m in model.modules()} & {"GEGLU", "RoutedGEGLU"})
    found["routing"] = row
    return found


def traced() -> dict:
    """What `torch.compile(fullgraph=True)` captures of a routed feed-forward, without running it (so in a
    process Triton did not take its interpreted mode in, where a kernel can be traced but not launched on
    CPU)."""
    import torch
    from diffusers.models.attention import FeedForward

    import geglu_kernel as gk

    torch.manual_seed(0)
    ff = FeedForward(64, activation_fn="geglu").half().eval().requires_grad_(False)
    gk.geglu(ff)
    gk.servable = lambda *args: True  # as on CUDA
    graphs = []

    def backend(gm, inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])

        def never(*args):
            raise RuntimeError("captured, not run")
        return never

    try:
        with torch.no_grad():
            torch.compile(ff, fullgraph=True, backend=backend)(torch.randn(2, 50, 64).half())
        outcome = "ran"
    except RuntimeError as exc:
        outcome = str(exc)
    return {"graphs": graphs, "outcome": outcome}


def in_process(probe_name: str, *, interpret: bool) -> dict:
    """A probe's findings, from a fresh process with Triton's interpreter on or off."""
    code = (f"import json, sys; sys.path[:0] = sys.argv[1:]; import test_geglu_kernel as t; "
            f"print(json.dumps(t.{probe_name}()))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-c", code, str(HERE), str(GPU_DIR)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def found() -> dict:
    return in_process("probe", interpret=True)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_gates_the_projection(found, case):
    tokens, k, n, bias, dtype, config = CASES[case]
    row = found["kernel"][case]
    assert row["shape"] == [2, tokens, n] and row["dtype"]
    assert not row["contiguous input"]  # read in place from evenly strided rows
    if dtype == "float32":
        assert row["diff"] < 1e-5 * row["scale"]
    else:  # fp32 products, bias and GELU, one rounding at the end: no further from exact than diffusers' fp16
        assert row["diff"] < 2e-3 * row["scale"]
        assert row["diff"] <= row["module diff"]


def test_mismatched_shapes_are_refused(found):
    assert "weight (10, 6) and input (3, 8) do not match" in found["mismatch"]


def test_routing_serves_geglu_modules_alone_and_undoes(found):
    row = found["routing"]
    assert row["routed"] == [1, 0]
    assert row["kinds"] == ["RoutedGEGLU", "GELU"]  # the plain-GELU feed-forward is left alone
    assert row["cpu falls back"]
    assert row["kernel ran"] and row["diff"] < 2e-3 * row["scale"]
    assert row["unrouted"] == [1, 0] and row["own forward again"] and row["kinds after"] == ["GEGLU"]


def test_a_compiled_feed_forward_takes_the_kernel_as_one_op_in_one_graph():
    """No graph break at the routed module (a break would leave the feed-forward to run eagerly, and a
    compiled UNet would be timed in pieces): the op is in the one graph, where the projection was."""
    found = in_process("traced", interpret=False)
    assert found["outcome"] == "captured, not run"
    (graph,) = found["graphs"]
    assert "experiments.geglu_projection.default" in graph
    assert sum("linear" in target for target in graph) == 1  # the second projection; the first is the kernel's
