"""Plain-torch versions of every op: the ground truth for the Triton kernels and the CPU path.

Math runs in float32; outputs come back in the input dtype (lse always float32). Attention
follows `AttentionMetadata` exactly and mirrors the GPU kernel's structure: each shared prefix
segment is attended once by all of its queries, the own (causal) segment per item, and the two
partial results are merged by log-sum-exp.
"""

from __future__ import annotations

import torch

from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.reference_layout import AttentionLayout, layout_for

__all__ = [
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
    "attention",
    "attention_with_lse",
    "merge_attn_states",
]

# Gathered K/V of one padded batch stays under this many elements (float32: 4 bytes each), so a
# step of many long decodes is processed in slices instead of one huge copy.
_MAX_GATHER_ELEMENTS = 1 << 24


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm with an optional fused residual add: returns (normed, new residual)."""
    # x, residual: [num_tokens, hidden]; weight: [hidden]
    x32 = x.float()
    if residual is not None:
        x32 = x32 + residual.float()
    var = x32.pow(2).mean(dim=-1, keepdim=True)
    out = x32 * torch.rsqrt(var + eps) * weight.float()
    residual_out = x32.to(x.dtype) if residual is not None else x
    return out.to(x.dtype), residual_out


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX ("rotate_half") rotary embedding of q and k at the given positions."""
    # q: [num_tokens, num_heads, head_dim]; k: [num_tokens, num_kv_heads, head_dim]
    # cos_sin_cache: [max_position, head_dim] = cat(cos, sin) over head_dim / 2 frequencies
    half = cos_sin_cache.shape[-1] // 2
    cs = cos_sin_cache.index_select(0, positions.long()).float()
    cos = cs[:, None, :half]  # [num_tokens, 1, head_dim / 2]
    sin = cs[:, None, half:]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x1, x2 = x32[..., :half], x32[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: silu(gate) * up for x = cat(gate, up) along the last dim."""
    # x: [num_tokens, 2 * intermediate] -> [num_tokens, intermediate]
    half = x.shape[-1] // 2
    x32 = x.float()
    return (torch.nn.functional.silu(x32[..., :half]) * x32[..., half:]).to(x.dtype)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Writes new tokens' K/V into the paged cache at their slots (in place)."""
    # k, v: [num_tokens, num_kv_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim]
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of a batch of query runs over one KV segment each, with its lse.

    q: [batch, q_len, num_heads, head_dim]; k, v: [batch, kv_len, num_kv_heads, head_dim];
    mask: [batch, q_len, kv_len] bool (True = visible) or None (all visible).
    Returns o [batch, q_len, num_heads, head_dim] float32 and lse [batch, q_len, num_heads]
    float32 (natural log; -inf and o = 0 where a query sees no key).
    """
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    group = num_heads // num_kv_heads
    # Query head h uses kv head h // group: view heads as [kv_heads, group].
    qg = q.float().reshape(batch, q_len, num_kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    kt = k.float().permute(0, 2, 3, 1).unsqueeze(2)  # [batch, kv_heads, 1, head_dim, kv_len]
    vv = v.float().permute(0, 2, 1, 3).unsqueeze(2)  # [batch, kv_heads, 1, kv_len, head_dim]
    scores = torch.matmul(qg, kt) * scale  # [batch, kv_heads, group, q_len, kv_len]
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [batch, kv_heads, group, q_len]
    finite = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(finite, lse, 0.0).unsqueeze(-1))
    out = torch.matmul(probs, vv)  # [batch, kv_heads, group, q_len, head_dim]
    out = out.permute(0, 3, 1, 2, 4).reshape(batch, q_len, num_heads, head_dim)
    lse = lse.permute(0, 3, 1, 2).reshape(batch, q_len, num_heads)
    return out, lse


def merge_attn_states(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges two partial attentions over disjoint key sets by their log-sum-exp.

    o_*: [num_tokens, num_heads, head_dim]; lse_*: [num_tokens, num_heads] float32, natural
    log, -inf for an empty part. Returns (o in o_a's dtype, lse float32).
    """
    la, lb = lse_a.float(), lse_b.float()
    m = torch.maximum(la, lb)
    m = torch.where(torch.isfinite(m), m, 0.0)  # both empty: weights 0, not nan
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    total = wa + wb
    denom = torch.where(total > 0, total, 1.0).unsqueeze(-1)
    o = (o_a.float() * wa.unsqueeze(-1) + o_b.float() * wb.unsqueeze(-1)) / denom
    return o.to(o_a.dtype), m + torch.log(total)


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Paged attention of one step: shared prefix segments plus own causal segments."""
    # q: [num_tokens, num_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim]
    num_tokens, num_heads, head_dim = q.shape
    layout = layout_for(meta, q.device)
    k_flat = k_cache.view(-1, k_cache.shape[2], head_dim)  # [num_slots, kv_heads, head_dim]
    v_flat = v_cache.view(-1, v_cache.shape[2], head_dim)
    out = torch.zeros(num_tokens, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_tokens, num_heads), float("-inf"), device=q.device)
    _own_part(q, k_flat, v_flat, scale, layout, out, lse)
    _shared_part(q, k_flat, v_flat, scale, layout, out, lse)
    return out.to(q.dtype)


def _own_part(q, k_flat, v_flat, scale, layout: AttentionLayout, out, lse) -> None:
    """Each item's own segment, causal; items padded into batches (decodes, then prefills)."""
    for batch in layout.own_batches:
        step = max(1, _MAX_GATHER_ELEMENTS // max(1, batch.kv_slots.numel() // batch.size
                                                   * k_flat.shape[1] * k_flat.shape[2]))
        for lo in range(0, batch.size, step):
            hi = min(batch.size, lo + step)
            tok = batch.token_index[lo:hi]  # [b, max_q] (padding points at token 0)
            slots = batch.kv_slots[lo:hi]  # [b, max_kv]
            o, l = attention_with_lse(q[tok], k_flat[slots], v_flat[slots], scale, batch.mask[lo:hi])
            valid = batch.token_valid[lo:hi]
            out[tok[valid]] = o[valid]
            lse[tok[valid]] = l[valid]


def _shared_part(q, k_flat, v_flat, scale, layout: AttentionLayout, out, lse) -> None:
    """Each shared segment once, for all of its queries, merged into the own part."""
    for seg in layout.shared_segments:
        qs = q[seg.token_index].unsqueeze(0)  # [1, n, num_heads, head_dim]
        ks = k_flat[seg.kv_slots].unsqueeze(0)  # [1, shared_len, kv_heads, head_dim]
        vs = v_flat[seg.kv_slots].unsqueeze(0)
        o, l = attention_with_lse(qs, ks, vs, scale)
        merged, merged_lse = merge_attn_states(out[seg.token_index], lse[seg.token_index], o[0], l[0])
        out[seg.token_index] = merged
        lse[seg.token_index] = merged_lse
