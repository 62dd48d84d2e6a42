"""An attention kernel for heads narrower than a power of two (SD v1's 40-wide heads), in Triton.

Every attention kernel PyTorch offers pads a 40-wide head to 64, so SD1.5's five 4096-token
self-attentions (8 heads of 40) cost what 64-wide heads would, with 8/5 as many of them. This kernel
splits each head into a 32-wide and a 16-wide part (48 in all) for both matrix products, takes the
softmax's exponentials two at a time in half precision (`ex2.approx.f16x2`, fp16 only: the
probabilities are rounded to fp16 for the second product anyway) and, with `ones`, gets each row's sum
from the second product, through a column of ones in the padding of the values. Scores, maxima and
sums are fp32, as in flash attention. It reads queries, keys and values where the projections wrote
them (`[batch, tokens, heads x width]`, fused QKV or not) and writes the layout the output projection
reads. `narrow_heads(unet)` routes a diffusers UNet's self-attentions through it on CUDA.

On an H100 it ties cuDNN's attention (README, "How close the UNet comes to the peak"), so the harness
does not use it; `narrow_heads.py` here measures it. Triton reads `TRITON_INTERPRET` when this module
is imported: with `TRITON_INTERPRET=1` it runs on CPU tensors (fp16 and fp32; tests/test_narrow_heads.py).
"""

from __future__ import annotations

import functools
import math

import triton
import triton.language as tl

OP = "experiments::narrow_head_attention"
CONFIG = (128, 128, 8, 3)  # BLOCK_M, BLOCK_N, warps, stages: the fastest on an H100 (narrow_heads.py)


def split_width(head_dim: int) -> tuple[int, int] | None:
    """(A, B): the head's two parts, powers of two with A + B > head_dim so the padding holds the
    column of ones; None for widths this kernel does not serve (powers of two run well already)."""
    if head_dim & (head_dim - 1) == 0 or not 16 < head_dim < 64:
        return None
    a = 1 << (head_dim.bit_length() - 1)
    b = max(16, 1 << (head_dim - a).bit_length())
    return a, b


@triton.jit
def kernel(Q, K, V, Out, H, N_Q, N_K, stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn,
           stride_ob, stride_on, D: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
           SCALE_LOG2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FAST: tl.constexpr,
           EVEN: tl.constexpr, ONES: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    col = (bh % H) * D
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    da = tl.arange(0, DA)
    db = DA + tl.arange(0, DB)
    keys = tl.arange(0, BLOCK_N)
    q_rows = Q + b * stride_qb + rows[:, None] * stride_qn + col
    row_ok = rows[:, None] < N_Q
    qa = tl.load(q_rows + da[None, :], mask=row_ok, other=0.0)
    qb = tl.load(q_rows + db[None, :], mask=row_ok & (db[None, :] < D), other=0.0)
    k_base = K + b * stride_kb + col
    v_base = V + b * stride_vb + col
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_a = tl.zeros([BLOCK_M, DA], tl.float32)
    acc_b = tl.zeros([BLOCK_M, DB], tl.float32)  # with ONES, column D - DA: the row's sum
    for start_n in range(0, N_K, BLOCK_N):
        kn = start_n + keys
        if EVEN:
            ka = tl.load(k_base + kn[None, :] * stride_kn + da[:, None])
            kb = tl.load(k_base + kn[None, :] * stride_kn + db[:, None], mask=db[:, None] < D, other=0.0)
        else:
            key_ok = kn[None, :] < N_K
            ka = tl.load(k_base + kn[None, :] * stride_kn + da[:, None], mask=key_ok, other=0.0)
            kb = tl.load(k_base + kn[None, :] * stride_kn + db[:, None], mask=key_ok & (db[:, None] < D),
                         other=0.0)
        s = tl.dot(qb, kb, tl.dot(qa, ka))
        if not EVEN:
            s = tl.where(kn[None, :] < N_K, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * SCALE_LOG2)
        x = s * SCALE_LOG2 - m_new[:, None]
        if FAST:  # two fp16 exponentials per instruction, as the second product reads them
            p = tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)],
                                          dtype=tl.float16, is_pure=True, pack=2)
        else:
            p = tl.math.exp2(x).to(Q.dtype.element_ty)
        alpha = tl.math.exp2(m_i - m_new)
        acc_a = acc_a * alpha[:, None]
        acc_b = acc_b * alpha[:, None]
        key_col = kn[:, None] < N_K
        va = tl.load(v_base + kn[:, None] * stride_vn + da[None, :], mask=key_col, other=0.0)
        vb = tl.load(v_base + kn[:, None] * stride_vn + db[None, :], mask=key_col & (db[None, :] < D), other=0.0)
        if ONES:  # the row's sum comes out of the second product, in column D
            vb = tl.where(db[None, :] == D, 1.0, vb)
        else:
            l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
        acc_a = tl.dot(p, va, acc_a)
        acc_b = tl.dot(p, vb, acc_b)
        m_i = m_new
    if ONES:
        total = tl.sum(tl.where(db[None, :] == D, acc_b, 0.0), 1)
    else:
        total = l_i
    o_rows = Out + b * stride_ob + rows[:, None] * stride_on + col
    tl.store(o_rows + da[None, :], (acc_a / total[:, None]).to(Out.dtype.element_ty), mask=row_ok)
    tl.store(o_rows + db[None, :], (acc_b / total[:, None]).to(Out.dtype.element_ty),
             mask=row_ok & (db[None, :] < D))


def launch(q, k, v, heads: int, *, out=None, config: tuple[int, int, int, int] | None = None,
           fast: bool | None = None, ones: bool = True, wrap=lambda f: f):
    """Attention of `q` [B, Nq, heads x D] over `k`, `v` [B, Nk, heads x D] (last dimension contiguous,
    any row stride), scale 1/sqrt(D) as SDPA's default; returns [B, Nq, heads x D]. `config` is (BLOCK_M,
    BLOCK_N, warps, stages), default `CONFIG`; `fast` (default: fp16 on CUDA) takes the exponentials in half
    precision; `ones` takes each row's sum from the second product (else from the probabilities)."""
    import torch

    block_m, block_n, warps, stages = config or CONFIG
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    batch, n_q, inner = q.shape
    d = inner // heads
    parts = split_width(d)
    if parts is None:
        raise ValueError(f"narrow-head attention: heads {d} wide are not served (expected 17-63, not a power of 2)")
    if out is None:
        out = torch.empty(batch, n_q, inner, device=q.device, dtype=q.dtype)
    if fast is None:
        fast = q.dtype == torch.float16 and q.is_cuda
    n_k = k.shape[1]
    grid = (triton.cdiv(n_q, block_m), batch * heads)
    wrap(kernel)[grid](q, k, v, out, heads, n_q, n_k, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                       v.stride(0), v.stride(1), out.stride(0), out.stride(1), D=d, DA=parts[0], DB=parts[1],
                       SCALE_LOG2=math.log2(math.e) / math.sqrt(d), BLOCK_M=block_m, BLOCK_N=block_n, FAST=fast,
                       EVEN=n_k % block_n == 0, ONES=ones, num_warps=warps, num_stages=stages)
    return out


@functools.cache
def op():
    """The kernel as a PyTorch op (registered once per process), so `torch.compile` and CUDA graphs
    take it as it is."""
    import torch
    from torch.library import triton_op, wrap_triton

    def attention(q, k, v, heads):
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        return launch(q, k, v, heads, out=out, wrap=wrap_triton)

    # the schema is read from annotations, which must be types (this module's are strings)
    attention.__annotations__ = {"q": torch.Tensor, "k": torch.Tensor, "v": torch.Tensor, "heads": int,
                                 "return": torch.Tensor}
    return triton_op(OP, attention, mutates_args=())


class NarrowHeads:
    """An attention processor: self-attention through the kernel, any other call through `inner`."""

    def __init__(self, inner):
        import torch

        self.inner = inner
        self.op = op()
        self.dtypes = (torch.float16, torch.bfloat16)

    def servable(self, attn, hidden_states, encoder_hidden_states, attention_mask, args, kwargs) -> bool:
        return (encoder_hidden_states is None and attention_mask is None and not args and not kwargs
                and hidden_states.ndim == 3 and hidden_states.is_cuda and hidden_states.dtype in self.dtypes
                and attn.spatial_norm is None and attn.group_norm is None
                and getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
                and not attn.residual_connection and attn.rescale_output_factor == 1.0)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if not self.servable(attn, hidden_states, encoder_hidden_states, attention_mask, args, kwargs):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        return attn.to_out[1](attn.to_out[0](self.op(q, k, v, attn.heads)))


def narrow_heads(unet) -> int:
    """Route every self-attention of `unet` whose heads `split_width` serves through the kernel (after
    `fuse_qkv_projections`, if any); returns how many."""
    routed = 0
    for module in unet.modules():
        if not hasattr(module, "set_processor") or not hasattr(module, "heads"):
            continue
        inner = getattr(module, "inner_dim", None) or module.to_q.out_features
        if getattr(module, "is_cross_attention", False) or split_width(inner // module.heads) is None:
            continue
        processor = module.processor
        if not isinstance(processor, NarrowHeads):
            module.set_processor(NarrowHeads(processor))
            routed += 1
    return routed
