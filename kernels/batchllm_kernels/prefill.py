"""Varlen prefill attention over the paged cache (flash-attention 2 style), causal.

Work item = (q tile of one prefill item, query head). A tile's queries first see the item's
shared prefix segment (every key visible), then its own segment: the keys before the tile's
first query without a mask, the diagonal part with the causal mask. A group's prefix being
prefilled is an item with no shared segment; a distinct part is one with it.

Packed heads (PACK = the GQA ratio, a power of two): a work item is (tile of BLOCK_M // PACK
tokens, kv head) and its BLOCK_M rows are every (token, query head) pair of that kv head, so
each K/V tile read from the paged cache serves all the query heads that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.triton_util import attend_kv_tile, find_tile, needs_wide_offsets, next_pow2

_LOG2E = 1.4426950408889634
_SCAN = 256


@triton.jit
def _attend_range(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, lo, hi, row_pos, kv_head,
                  sm_scale_log2, stride_kb, stride_ks, stride_kh,
                  offs_n, offs_d, d_mask, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  CAUSAL: tl.constexpr, FAST: tl.constexpr, WIDE: tl.constexpr):
    """Folds keys lo:hi of one paged sequence into the running state (causal: key <= row_pos).
    FAST: whole tiles of a non-causal range skip every mask."""
    full_end = lo + (hi - lo) // BLOCK_N * BLOCK_N if FAST and not CAUSAL else lo
    for start in range(lo, full_end, BLOCK_N):
        pos = start + offs_n
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, pos, pos < hi,
                                       None, kv_head, sm_scale_log2, stride_kb, stride_ks, stride_kh,
                                       offs_d, d_mask, BLOCK_SIZE, False, WIDE)
    for start in range(full_end, hi, BLOCK_N):
        pos = start + offs_n
        pos_mask = pos < hi
        visible = pos_mask[None, :]
        if CAUSAL:
            visible = visible & (pos[None, :] <= row_pos[:, None])
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, pos, pos_mask,
                                       visible, kv_head, sm_scale_log2, stride_kb, stride_ks, stride_kh,
                                       offs_d, d_mask, BLOCK_SIZE, True, WIDE)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["first_item", "num_items", "stride_own_table", "stride_shared_table"])
def prefill_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, o_ptr,
    cu_ptr, own_ctx_ptr, own_tables_ptr, shared_ids_ptr, shared_lens_ptr, shared_tables_ptr,
    first_item, num_items, sm_scale_log2,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_own_table, stride_shared_table,
    GQA_RATIO: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, SCAN: tl.constexpr,
    FAST: tl.constexpr, WIDE: tl.constexpr, PACK: tl.constexpr,
):
    TOK_M: tl.constexpr = BLOCK_M // PACK  # query tokens per tile
    tile = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    if PACK > 1:  # program axis 1 is the kv head; rows are (token, head of that kv head)
        kv_head = tl.program_id(1)
        q_head = kv_head * PACK + rows % PACK
        row_tok = rows // PACK
    else:
        q_head = tl.program_id(1)
        kv_head = q_head // GQA_RATIO
        row_tok = rows
    idx, tiles_before = find_tile(cu_ptr + first_item, num_items, tile, TOK_M, SCAN)
    if idx < num_items:
        item = first_item + idx
        q_start = tl.load(cu_ptr + item)
        q_len = tl.load(cu_ptr + item + 1) - q_start
        tile_start = (tile - tiles_before) * TOK_M
        offs_m = tile_start + row_tok
        row_valid = offs_m < q_len
        ctx = tl.load(own_ctx_ptr + item)
        row_pos = ctx + offs_m  # own position of each query
        token = (q_start + offs_m).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        q_rows = token * stride_qt + q_head * stride_qh
        q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :],
                    mask=row_valid[:, None] & d_mask[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        offs_n = tl.arange(0, BLOCK_N)

        shared = tl.load(shared_ids_ptr + item)
        shared_row = tl.maximum(shared, 0)
        shared_len = tl.load(shared_lens_ptr + shared_row, mask=shared >= 0, other=0)
        shared_table = shared_tables_ptr + shared_row.to(tl.int64) * stride_shared_table
        acc, m_i, l_i = _attend_range(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, shared_table, 0, shared_len, row_pos,
            kv_head, sm_scale_log2, stride_kb, stride_ks, stride_kh,
            offs_n, offs_d, d_mask, BLOCK_N, BLOCK_SIZE, False, FAST, WIDE)

        own_table = own_tables_ptr + item.to(tl.int64) * stride_own_table
        full_end = ctx + tile_start  # every query of the tile sees the keys before this
        diag_end = ctx + tl.minimum(q_len, tile_start + TOK_M)
        acc, m_i, l_i = _attend_range(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, own_table, 0, full_end, row_pos,
            kv_head, sm_scale_log2, stride_kb, stride_ks, stride_kh,
            offs_n, offs_d, d_mask, BLOCK_N, BLOCK_SIZE, False, FAST, WIDE)
        acc, m_i, l_i = _attend_range(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, own_table, full_end, diag_end, row_pos,
            kv_head, sm_scale_log2, stride_kb, stride_ks, stride_kh,
            offs_n, offs_d, d_mask, BLOCK_N, BLOCK_SIZE, True, FAST, WIDE)

        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_rows = token * stride_ot + q_head * stride_oh
        tl.store(o_ptr + o_rows[:, None] + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=row_valid[:, None] & d_mask[None, :])


@dataclass(frozen=True)
class PrefillLaunch:
    """Tile shape and pipelining of one prefill_attention launch."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    pack_heads: bool = True


@lru_cache(maxsize=None)  # called per layer on the eager path
def prefill_launch(head_dim: int) -> PrefillLaunch:
    """The launch settings by head dim, measured best on an H100 (benchmarks/bench_prefill.py,
    benchmarks/results/prefill_h100.jsonl; us per launch, default -> chosen). Packed heads at
    head_dim 64: 16 members x 200 tokens after a 16,000-token prefix 1,462 -> 1,270, 8,192-token
    chunks unchanged (811 -> 809, 2,172 -> 2,203 after 8,192 cached), a lone 2,048-token prompt
    83 -> 89. At head_dim 128, 128x128 tiles of 8 warps, packed: chunks 1,492 -> 1,345 and
    4,156 -> 3,571, members 2,670 -> 2,281, the lone 2,048 prompt 136 -> 148."""
    if head_dim > 64:
        return PrefillLaunch(block_m=128, block_n=128, num_warps=8)
    return PrefillLaunch()


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    fast_tiles: bool = True,
    wide_offsets: bool | None = None,
    pack_heads: bool | None = None,
) -> None:
    """Attention of the step's prefill items (tokens after the decodes) into `out`, in place.
    Launch settings left None come from `prefill_launch`. pack_heads: a tile holds every query
    head of one kv head (GQA ratio a power of two that divides block_m; otherwise ignored)."""
    # q, out: [num_tokens, num_q_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim]
    first_item = meta.num_decodes
    num_items = meta.num_items - first_item
    if num_items <= 0:
        return
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if k_cache.stride() != v_cache.stride():
        raise ValueError("the K and V caches must share one layout (the kernel reads both at one offset)")
    chosen = prefill_launch(head_dim)
    block_m = block_m or chosen.block_m
    block_n = block_n or chosen.block_n
    num_warps = num_warps or chosen.num_warps
    num_stages = num_stages or chosen.num_stages
    pack_heads = chosen.pack_heads if pack_heads is None else pack_heads
    gqa = num_q_heads // num_kv_heads
    pack = gqa if pack_heads and gqa > 1 and gqa & (gqa - 1) == 0 and block_m % gqa == 0 else 1
    tok_m = block_m // pack
    prefill_tokens = num_tokens - first_item  # each decode item is one token
    slots = max(1, min(prefill_tokens, num_items + prefill_tokens // tok_m))
    prefill_attention_kernel[(slots, num_q_heads // pack)](
        q, k_cache, v_cache, out,
        meta.cu_seqlens_q, meta.own_ctx_lens, meta.own_block_tables, meta.shared_ids,
        meta.shared_lens, meta.shared_block_tables,
        first_item, num_items, scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        meta.own_block_tables.stride(0), meta.shared_block_tables.stride(0),
        GQA_RATIO=gqa, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_SIZE=meta.block_size, SCAN=_SCAN,
        FAST=fast_tiles and next_pow2(head_dim) == head_dim,
        WIDE=wide_offsets if wide_offsets is not None else needs_wide_offsets(k_cache),
        PACK=pack, num_warps=num_warps, num_stages=num_stages,
    )
