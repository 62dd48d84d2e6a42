"""The GEGLU feed-forward projection with its gate in the epilogue, in Triton.

Each transformer block of an SD UNet has a feed-forward layer that opens with a GEGLU: one linear
projection of the `dim`-wide tokens to 2 x `inner` columns, then `value * gelu(gate)` of its two halves.
Compiled, that is a cuBLAS product writing all 2 x `inner` columns and an element-wise kernel reading
them back to write `inner`: at SD1.5's 64x64 latent (320 -> 2 x 1280, 32 latents) the gate alone
costs 1.66 ms of a 68 ms forward, and the product spends as many bytes writing as it reads.

Here one program computes a tile of the value columns and the matching tile of the gate columns
together (two accumulators over the same tile of the input: a "dual" product), adds the biases, takes
the exact (erf) GELU of the gate in fp32, multiplies, and writes only the `inner` gated columns. The
weight is the `nn.Linear`'s as it is (value rows first, gate rows after), so nothing is copied.
Accumulation, bias and GELU are fp32; diffusers rounds the projection to the model's dtype before the
GELU, so results differ from it in the last bits, as a compiled UNet's do from eager.

`geglu(unet)` routes a diffusers UNet's GEGLU modules through it on CUDA (fp16 and bf16). Triton reads
`TRITON_INTERPRET` when this module is imported: with `TRITON_INTERPRET=1` it runs on CPU tensors
(tests/test_geglu_kernel.py); `geglu.py` here times it.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

OP = "experiments::geglu_projection"
# BLOCK_M, BLOCK_N (of each half), BLOCK_K, GROUP_M, warps, stages: a first guess, not yet tuned on a card
CONFIG = (128, 128, 64, 8, 8, 3)
TUNED: dict[tuple[int, int], tuple[int, ...]] = {}  # (K, N) -> the config to use for that shape (geglu.py)


@triton.jit
def kernel(X, W, Bias, Out, M, N, K, stride_xm, stride_wn, stride_om, HAS_BIAS: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
           EVEN_K: tl.constexpr):
    # programs in groups of GROUP_M row tiles walk the column tiles together, so a weight tile is read
    # from L2 by the group rather than from memory by each
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % per_group) % group_m
    tile_n = (pid % per_group) // group_m

    rows = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows x stride passes 2^31 at large batches
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows[:, None] < M
    col_ok = cols[None, :] < N
    x_ptrs = X + rows[:, None] * stride_xm + ks[None, :]
    v_ptrs = W + cols[None, :] * stride_wn + ks[:, None]          # value rows of the weight, as [K, N]
    g_ptrs = v_ptrs + N * stride_wn                                # the gate rows, N further down
    acc_v = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=row_ok, other=0.0)
            wv = tl.load(v_ptrs, mask=col_ok, other=0.0)
            wg = tl.load(g_ptrs, mask=col_ok, other=0.0)
        else:
            k_ok = (k + ks) < K
            x = tl.load(x_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
            wv = tl.load(v_ptrs, mask=col_ok & k_ok[:, None], other=0.0)
            wg = tl.load(g_ptrs, mask=col_ok & k_ok[:, None], other=0.0)
        acc_v = tl.dot(x, wv, acc_v)
        acc_g = tl.dot(x, wg, acc_g)
        x_ptrs += BLOCK_K
        v_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
    if HAS_BIAS:
        acc_v += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        acc_g += tl.load(Bias + N + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    gated = acc_v * (0.5 * acc_g * (1.0 + tl.math.erf(acc_g * 0.7071067811865476)))
    out_ptrs = Out + rows[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, gated.to(Out.dtype.element_ty), mask=row_ok & col_ok)


def launch(x, weight, bias=None, *, out=None, config: tuple[int, ...] | None = None, wrap=lambda f: f):
    """`value * gelu(gate)` of `x @ weight.T + bias` split in two halves along the last dimension:
    `x` [..., K] (any leading shape whose rows are evenly strided), `weight` [2N, K] and `bias` [2N] as
    an `nn.Linear` holds them; returns [..., N]. `config` is (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps,
    stages), default the one `TUNED` holds for the shape, else `CONFIG`."""
    import torch

    two_n, k = weight.shape
    block_m, block_n, block_k, group_m, warps, stages = config or TUNED.get((k, two_n // 2), CONFIG)
    if two_n % 2 or x.shape[-1] != k:
        raise ValueError(f"GEGLU projection: weight {tuple(weight.shape)} and input {tuple(x.shape)} do not "
                         f"match (expected [2N, K] and [..., K])")
    n = two_n // 2
    lead = x.shape[:-1]
    rows = x.reshape(-1, k)  # a view where the rows are evenly strided
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    m = rows.shape[0]
    if out is None:
        out = torch.empty(*lead, n, device=x.device, dtype=x.dtype)
    flat = out.view(m, n)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    wrap(kernel)[grid](rows, weight, bias if bias is not None else weight, flat, m, n, k, rows.stride(0),
                       weight.stride(0), flat.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m,
                       BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, EVEN_K=k % block_k == 0,
                       num_warps=warps, num_stages=stages)
    return out


@functools.cache
def op():
    """The kernel as a PyTorch op (registered once per process), so `torch.compile` and CUDA graphs
    take it as it is."""
    import torch
    from torch.library import triton_op, wrap_triton

    def projection(x, weight, bias):
        out = torch.empty(*x.shape[:-1], weight.shape[0] // 2, device=x.device, dtype=x.dtype)
        return launch(x, weight, bias, out=out, wrap=wrap_triton)

    # the schema is read from annotations, which must be types (this module's are strings)
    projection.__annotations__ = {"x": torch.Tensor, "weight": torch.Tensor, "bias": torch.Tensor | None,
                                  "return": torch.Tensor}
    return triton_op(OP, projection, mutates_args=())


def servable(module, hidden_states) -> bool:
    """What the kernel serves: CUDA tensors of the weight's half-precision dtype, with no gradient to
    take (the op has no backward)."""
    import torch

    weight = module.proj.weight
    return (hidden_states.is_cuda and hidden_states.dtype in (torch.float16, torch.bfloat16)
            and weight.dtype == hidden_states.dtype
            and not (torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad)))


@functools.cache
def routed_class():
    """diffusers' GEGLU with its forward through the kernel where `servable`, its own elsewhere."""
    from diffusers.models.activations import GEGLU

    projection = op()  # taken here: a call to the cached `op()` inside forward would break a compiled graph

    class RoutedGEGLU(GEGLU):
        def forward(self, hidden_states, *args, **kwargs):
            if args or kwargs or not servable(self, hidden_states):
                return super().forward(hidden_states, *args, **kwargs)
            return projection(hidden_states, self.proj.weight, self.proj.bias)

    return RoutedGEGLU


def geglu(unet) -> int:
    """Route every diffusers GEGLU module of `unet` through the kernel; returns how many were routed
    now (one routed before is not counted again). `unroute(unet)` undoes it."""
    routed = routed_class()
    done = 0
    for module in unet.modules():
        if type(module) is routed.__base__:
            module.__class__ = routed
            done += 1
    return done


def unroute(unet) -> int:
    """Undo `geglu(unet)`; returns how many modules took back diffusers' forward."""
    routed = routed_class()
    done = 0
    for module in unet.modules():
        if type(module) is routed:
            module.__class__ = routed.__base__
            done += 1
    return done
