"""Log-sum-exp merge of two partial attention states (FlashInfer's cascade merge), in Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm_kernels.triton_util import next_pow2


@triton.jit
def merge_attn_states_kernel(
    oa_ptr, la_ptr, ob_ptr, lb_ptr, o_ptr, lse_ptr,
    num_heads, head_dim,
    stride_oa_t, stride_oa_h, stride_ob_t, stride_ob_h, stride_o_t, stride_o_h,
    stride_la_t, stride_lb_t,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    hmask = heads < num_heads
    mask = hmask[:, None] & (dims < head_dim)[None, :]
    la = tl.load(la_ptr + t * stride_la_t + heads, mask=hmask, other=float("-inf")).to(tl.float32)
    lb = tl.load(lb_ptr + t * stride_lb_t + heads, mask=hmask, other=float("-inf")).to(tl.float32)
    m = tl.maximum(la, lb)
    m = tl.where(m == float("-inf"), 0.0, m)  # both parts empty: weights 0, not nan
    wa = tl.exp(la - m)
    wb = tl.exp(lb - m)
    total = wa + wb
    hoff = heads[:, None].to(tl.int64)
    oa = tl.load(oa_ptr + t * stride_oa_t + hoff * stride_oa_h + dims[None, :], mask=mask, other=0.0)
    ob = tl.load(ob_ptr + t * stride_ob_t + hoff * stride_ob_h + dims[None, :], mask=mask, other=0.0)
    o = (oa.to(tl.float32) * wa[:, None] + ob.to(tl.float32) * wb[:, None]) / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(o_ptr + t * stride_o_t + hoff * stride_o_h + dims[None, :], o.to(o_ptr.dtype.element_ty), mask=mask)
    lse = tl.where(total > 0, m + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    tl.store(lse_ptr + t * num_heads + heads, lse, mask=hmask)


def merge_attn_states(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges two partial attentions over disjoint keys; returns (o in o_a's dtype, lse float32)."""
    # o_*: [num_tokens, num_heads, head_dim]; lse_*: [num_tokens, num_heads] float32, natural log
    num_tokens, num_heads, head_dim = o_a.shape
    o_a = o_a if o_a.stride(-1) == 1 else o_a.contiguous()
    o_b = o_b if o_b.stride(-1) == 1 else o_b.contiguous()
    lse_a = lse_a if lse_a.stride(-1) == 1 else lse_a.contiguous()
    lse_b = lse_b if lse_b.stride(-1) == 1 else lse_b.contiguous()
    o = torch.empty((num_tokens, num_heads, head_dim), dtype=o_a.dtype, device=o_a.device)
    lse = torch.empty((num_tokens, num_heads), dtype=torch.float32, device=o_a.device)
    if num_tokens == 0:
        return o, lse
    merge_attn_states_kernel[(num_tokens,)](
        o_a, lse_a, o_b, lse_b, o, lse,
        num_heads, head_dim,
        o_a.stride(0), o_a.stride(1), o_b.stride(0), o_b.stride(1), o.stride(0), o.stride(1),
        lse_a.stride(0), lse_b.stride(0),
        BLOCK_H=next_pow2(num_heads), BLOCK_D=next_pow2(head_dim), num_warps=4,
    )
    return o, lse
