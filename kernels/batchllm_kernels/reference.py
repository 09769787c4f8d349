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
    """Writes new tokens' K/V into the paged cache at their slots (in place); slots < 0 are skipped."""
    # k, v: [num_tokens, num_kv_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim]
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    keep = slot_mapping >= 0  # slots < 0: padding tokens, not stored (as the Triton kernel does)
    if not bool(keep.all()):
        slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]
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

    q: [batch, q_len, num_heads, head_dim]; k, v: [batch, num_kv_heads, kv_len, head_dim]
    (head-major, contiguous: the matmuls then need no copies); mask: [batch, q_len, kv_len]
    bool (True = visible) or None (all visible). Query head h uses kv head h // group.
    Returns o [batch, q_len, num_heads, head_dim] float32 and lse [batch, q_len, num_heads]
    float32 (natural log; -inf and o = 0 where a query sees no key).
    """
    batch, q_len, num_heads, head_dim = q.shape
    num_kv_heads, kv_len = k.shape[1], k.shape[2]
    group = num_heads // num_kv_heads
    # [batch, kv_heads, q_len * group, head_dim]: the queries of one kv head as one matrix
    qg = q.float().view(batch, q_len, num_kv_heads, group, head_dim).transpose(1, 2)
    qg = qg.reshape(batch, num_kv_heads, q_len * group, head_dim)
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * scale  # [b, kvh, q_len*group, kv]
    if mask is not None:
        view = scores.view(batch, num_kv_heads, q_len, group, kv_len)
        view.masked_fill_(~mask[:, None, :, None, :], float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)  # fully masked rows
    probs = torch.exp(scores - row_max)
    total = probs.sum(dim=-1, keepdim=True)
    probs = probs / torch.where(total > 0, total, 1.0)
    out = torch.matmul(probs, v.float())  # [batch, kv_heads, q_len * group, head_dim]
    out = out.view(batch, num_kv_heads, q_len, group, head_dim).transpose(1, 2)
    lse = (row_max + torch.log(total)).view(batch, num_kv_heads, q_len, group).transpose(1, 2)
    return out.reshape(batch, q_len, num_heads, head_dim), lse.reshape(batch, q_len, num_heads)


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
    num_kv_heads = k_cache.shape[2]
    layout = layout_for(meta, q.device, num_kv_heads)
    # One row per (slot, kv head): the layout's indices gather K/V head-major in one copy.
    k_rows = k_cache.view(-1, head_dim)
    v_rows = v_cache.view(-1, head_dim)
    out = torch.zeros(num_tokens, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_tokens, num_heads), float("-inf"), device=q.device)
    _own_part(q, k_rows, v_rows, scale, layout, out, lse)
    _shared_part(q, k_rows, v_rows, scale, layout, out, lse)
    return out.to(q.dtype)


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[..., kv_heads, kv_len] row indices -> [..., kv_heads, kv_len, head_dim] (contiguous)."""
    return rows.index_select(0, index.flatten()).view(*index.shape, rows.shape[-1])


def _own_part(q, k_rows, v_rows, scale, layout: AttentionLayout, out, lse) -> None:
    """Each item's own segment, causal; items padded into batches of similar shape."""
    for batch in layout.own_batches:
        per_item = batch.kv_index[0].numel() * k_rows.shape[-1]
        step = max(1, _MAX_GATHER_ELEMENTS // per_item)
        for lo in range(0, batch.size, step):
            hi = min(batch.size, lo + step)
            tok = batch.token_index[lo:hi]  # [b, max_q] (padding points at token 0)
            k = _gather(k_rows, batch.kv_index[lo:hi])  # [b, kv_heads, max_kv, head_dim]
            v = _gather(v_rows, batch.kv_index[lo:hi])
            o, l = attention_with_lse(q[tok], k, v, scale, batch.mask[lo:hi])
            valid = batch.token_valid[lo:hi]
            out[tok[valid]] = o[valid]
            lse[tok[valid]] = l[valid]


def _shared_part(q, k_rows, v_rows, scale, layout: AttentionLayout, out, lse) -> None:
    """Each shared segment once, for all of its queries, merged into the own part."""
    for seg in layout.shared_segments:
        qs = q[seg.token_index].unsqueeze(0)  # [1, n, num_heads, head_dim]
        k = _gather(k_rows, seg.kv_index).unsqueeze(0)  # [1, kv_heads, shared_len, head_dim]
        v = _gather(v_rows, seg.kv_index).unsqueeze(0)
        o, l = attention_with_lse(qs, k, v, scale)
        merged, merged_lse = merge_attn_states(out[seg.token_index], lse[seg.token_index], o[0], l[0])
        out[seg.token_index] = merged
        lse[seg.token_index] = merged_lse
