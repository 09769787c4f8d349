"""NeoX-style ("rotate_half") rotary embedding of q and k: one Triton program per token."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm_kernels.triton_util import next_pow2


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, t, num_heads, stride_t, stride_h, dst_stride_t, dst_stride_h, cos, sin,
    offs_half, half_mask, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    mask = (heads < num_heads)[:, None] & half_mask[None, :]
    src = src_ptr + t * stride_t + heads[:, None].to(tl.int64) * stride_h + offs_half[None, :]
    dst = dst_ptr + t * dst_stride_t + heads[:, None].to(tl.int64) * dst_stride_h + offs_half[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    ty = dst_ptr.dtype.element_ty
    tl.store(dst, (x1 * cos[None, :] - x2 * sin[None, :]).to(ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(ty), mask=mask)


@triton.jit
def rotary_embedding_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cache_ptr,
    num_q_heads, num_kv_heads,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cache,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK_HALF)
    half_mask = offs < HALF
    cos = tl.load(cache_ptr + pos * stride_cache + offs, mask=half_mask, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs, mask=half_mask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, t, num_q_heads, stride_qt, stride_qh, stride_qot, stride_qoh,
                  cos, sin, offs, half_mask, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr, k_out_ptr, t, num_kv_heads, stride_kt, stride_kh, stride_kot, stride_koh,
                  cos, sin, offs, half_mask, HALF, BLOCK_HK)


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated copies of q and k (inputs may be strided views, e.g. of a fused qkv output)."""
    # q: [num_tokens, num_heads, head_dim]; k: [num_tokens, num_kv_heads, head_dim]
    # positions: [num_tokens] int64; cos_sin_cache: [max_position, head_dim] float32
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if cos_sin_cache.shape[-1] != head_dim:
        raise ValueError(f"cos_sin_cache has {cos_sin_cache.shape[-1]} columns, head_dim is {head_dim}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    rotary_embedding_kernel[(num_tokens,)](
        q, k, q_out, k_out, positions, cache,
        num_q_heads, num_kv_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cache.stride(0),
        HALF=half, BLOCK_HALF=next_pow2(half),
        BLOCK_HQ=next_pow2(num_q_heads), BLOCK_HK=next_pow2(num_kv_heads), num_warps=4,
    )
    return q_out, k_out
