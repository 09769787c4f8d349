"""Prefix-shared decode attention: one launch for a step's decodes (PAPER.md idea 4).

Work item = (tile, kv head, split). A tile is up to ITEMS decodes of one decode group (a run
of decodes with one shared prefix segment, or a single decode without one); their queries
for the GQA_RATIO query heads of the kv head are packed into the M rows of one tile, so every
prefix KV tile is loaded once for all of them and multiplied as a matrix (horizontal fusion).
The same program then walks its decodes' own paged segments, each row seeing only its own
keys: prefix part, own part and their log-sum-exp merge happen in one launch, in registers.
When the tiles alone would leave multiprocessors idle (few groups, long prefixes: the paper's
weak case), the key range is cut into splits (split-K) that write partial (o, lse) states,
merged by a small second launch, or (merge_in_launch=True) by the last split of each tile to
finish, found with an atomic counter. On an H100 the second launch measured faster (the
in-launch merge costs the main loop registers), so it is the default.

Tall tiles (many decodes per group) would walk each decode's own keys with every row of the
tile; there the own segments run in `own_decode_kernel` instead (one small program per decode
and kv head), on a side stream next to the prefix launch so that the memory-bound own work
fills the multiprocessors the compute-bound prefix tiles leave, and their partial states join
the merge. Programs are ordered kv head first, so one tile's heads (neighbouring cache bytes)
run side by side. The host-side launch choices (tile height, splits, keys per tile) live in
decode_launch.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm_kernels.decode_launch import decode_block_n, decode_launch_shape, own_segments_apart
from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.triton_util import (
    attend_kv_tile, find_tile, interpreting, needs_wide_offsets, next_pow2,
)

_LOG2E = 1.4426950408889634
_SCAN = 256  # groups examined per step of the in-kernel tile search
_counters: dict[torch.device, torch.Tensor] = {}
_retired: list[torch.Tensor] = []
_streams: dict[torch.device, torch.cuda.Stream] = {}  # old counter buffers stay alive for captured CUDA graphs


@triton.jit
def _merge_splits(part_o_ptr, part_lse_ptr, token, q_head, row_mask, offs_d, d_mask, num_splits,
                  num_decodes, num_q_heads, HEAD_DIM: tl.constexpr):
    """Log-sum-exp merge of the splits' partial states (lse in log2 units) of a set of rows."""
    m = tl.full(token.shape, -1.0e30, tl.float32)
    w = tl.zeros(token.shape, tl.float32)
    acc = tl.zeros([token.shape[0], offs_d.shape[0]], tl.float32)
    for sp in range(0, num_splits):
        row = (sp * num_decodes + token) * num_q_heads + q_head
        # .cg: read from L2, never a stale L1 line (other programs wrote these).
        lse = tl.load(part_lse_ptr + row, mask=row_mask, other=float("-inf"), cache_modifier=".cg")
        o = tl.load(part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, lse)
        a = tl.math.exp2(m - m_new)
        b = tl.math.exp2(lse - m_new)
        acc = acc * a[:, None] + o * b[:, None]
        w = w * a + b
        m = m_new
    return acc / tl.where(w > 0, w, 1.0)[:, None]


@triton.jit(do_not_specialize=["num_groups", "num_decodes", "num_splits", "num_kv_heads",
                               "stride_own_table", "stride_shared_table"])
def prefix_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, o_ptr, part_o_ptr, part_lse_ptr, counter_ptr,
    group_ptr_ptr, group_shared_ptr, own_ctx_ptr, own_tables_ptr, shared_lens_ptr, shared_tables_ptr,
    num_groups, num_decodes, num_splits, num_kv_heads, sm_scale_log2,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_own_table, stride_shared_table,
    GQA_RATIO: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, ITEMS: tl.constexpr, ITEMS_P2: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr,
    MERGE_IN_LAUNCH: tl.constexpr, SCAN: tl.constexpr, OWN_IN_TILE: tl.constexpr,
    HEADS_FIRST: tl.constexpr, FAST: tl.constexpr, WIDE: tl.constexpr,
):
    if HEADS_FIRST:  # the kv heads of one tile run side by side (neighbouring cache bytes)
        kv_head = tl.program_id(0)
        tile = tl.program_id(1)
    else:
        tile = tl.program_id(0)
        kv_head = tl.program_id(1)
    split = tl.program_id(2)
    g, tiles_before = find_tile(group_ptr_ptr, num_groups, tile, ITEMS, SCAN)
    if g < num_groups:
        group_end = tl.load(group_ptr_ptr + g + 1)
        first = tl.load(group_ptr_ptr + g) + (tile - tiles_before) * ITEMS
        count = tl.minimum(group_end - first, ITEMS)

        # Rows: (decode j of the tile, query head r of this kv head) -> row j * GQA_RATIO + r.
        offs_m = tl.arange(0, BLOCK_M)
        row_item = offs_m // GQA_RATIO
        row_valid = row_item < count
        token = (first + row_item).to(tl.int64)  # decodes lead the step: item i is token i
        q_head = kv_head * GQA_RATIO + offs_m % GQA_RATIO
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        q = tl.load(q_ptr + token[:, None] * stride_qt + q_head[:, None] * stride_qh + offs_d[None, :],
                    mask=row_valid[:, None] & d_mask[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        # Shared prefix: each KV tile is loaded once and multiplied against every row of the tile.
        shared = tl.load(group_shared_ptr + g)
        shared_row = tl.maximum(shared, 0)
        shared_len = tl.load(shared_lens_ptr + shared_row, mask=shared >= 0, other=0)
        shared_table = shared_tables_ptr + shared_row.to(tl.int64) * stride_shared_table
        offs_i = tl.arange(0, ITEMS_P2)
        # Own length = cached context + the decode's own new token (already stored).
        own_len = tl.load(own_ctx_ptr + first + offs_i, mask=offs_i < count, other=-1) + 1
        own_tiles = tl.max(tl.cdiv(own_len, BLOCK_N), 0)  # per decode, padded to the longest
        # Splits cut the tile's work (prefix tiles, then own tiles) into equal runs of tiles.
        prefix_tiles = tl.cdiv(shared_len, BLOCK_N)
        if OWN_IN_TILE:
            total = prefix_tiles + count * own_tiles
        else:  # own segments run in own_decode_kernel
            total = prefix_tiles
        per_split = tl.cdiv(total, num_splits)
        t_lo = split * per_split
        t_hi = tl.minimum(total, t_lo + per_split)
        offs_n = tl.arange(0, BLOCK_N)
        # Prefix tiles inside the prefix take the unmasked path; the last, partial one does not.
        full_tiles = shared_len // BLOCK_N if FAST else 0
        for t in range(t_lo, tl.minimum(t_hi, full_tiles)):
            pos = t * BLOCK_N + offs_n
            acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, shared_table, pos,
                                           pos < shared_len, None, kv_head, sm_scale_log2, stride_kb,
                                           stride_ks, stride_kh, offs_d, d_mask, BLOCK_SIZE, False, WIDE)
        for t in range(tl.maximum(t_lo, full_tiles), tl.minimum(t_hi, prefix_tiles)):
            pos = t * BLOCK_N + offs_n
            pos_mask = pos < shared_len
            acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, shared_table, pos,
                                           pos_mask, pos_mask[None, :], kv_head, sm_scale_log2, stride_kb,
                                           stride_ks, stride_kh, offs_d, d_mask, BLOCK_SIZE, True, WIDE)

        # Own segments: one flat loop over (decode j, own tile) so that loads pipeline across
        # decodes; a tile of decode j updates only decode j's rows.
        for f in range(tl.maximum(t_lo, prefix_tiles) - prefix_tiles, t_hi - prefix_tiles):
            j = f // own_tiles
            item = first + j
            pos = (f - j * own_tiles) * BLOCK_N + offs_n
            own_table = own_tables_ptr + item.to(tl.int64) * stride_own_table
            pos_mask = pos < tl.load(own_ctx_ptr + item) + 1
            acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, own_table, pos,
                                           pos_mask, (row_item == j)[:, None] & pos_mask[None, :], kv_head,
                                           sm_scale_log2, stride_kb, stride_ks, stride_kh, offs_d, d_mask,
                                           BLOCK_SIZE, True, WIDE)

        out_mask = row_valid[:, None] & d_mask[None, :]
        if SPLIT:
            lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
            part = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            row = (split * num_decodes + token) * (num_kv_heads * GQA_RATIO) + q_head
            tl.store(part_lse_ptr + row, lse, mask=row_valid)
            tl.store(part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], part, mask=out_mask)
            if MERGE_IN_LAUNCH:
                # Every thread's partial stores happen before the counter's release.
                tl.debug_barrier()
                counter = counter_ptr + tile * num_kv_heads + kv_head
                arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                if arrived == num_splits - 1:
                    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # zero for the next launch
                    tl.debug_barrier()
                    out = _merge_splits(part_o_ptr, part_lse_ptr, token, q_head, row_valid, offs_d,
                                        d_mask, num_splits, num_decodes,
                                        num_kv_heads * GQA_RATIO, HEAD_DIM)
                    tl.store(o_ptr + token[:, None] * stride_ot + q_head[:, None] * stride_oh
                             + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=out_mask)
        else:
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            tl.store(o_ptr + token[:, None] * stride_ot + q_head[:, None] * stride_oh + offs_d[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["num_decodes", "part_slot", "num_kv_heads", "stride_own_table"])
def own_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, part_o_ptr, part_lse_ptr, own_ctx_ptr, own_tables_ptr,
    num_decodes, part_slot, num_kv_heads, sm_scale_log2,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_own_table,
    GQA_RATIO: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEADS_FIRST: tl.constexpr, FAST: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One decode's own segment for one kv head: its GQA_RATIO query rows only (padded to
    BLOCK_M), written as the partial state `part_slot` for the merge launch. Used when the
    prefix tiles hold several decodes, where walking each decode's own keys with the whole
    tile would multiply rows that must ignore them."""
    if HEADS_FIRST:
        kv_head = tl.program_id(0)
        item = tl.program_id(1)
    else:
        item = tl.program_id(0)
        kv_head = tl.program_id(1)
    token = item.to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    row_valid = offs_m < GQA_RATIO
    q_head = kv_head * GQA_RATIO + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + token * stride_qt + q_head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    own_len = tl.load(own_ctx_ptr + item) + 1  # cached context + the new token
    table = own_tables_ptr + token * stride_own_table
    offs_n = tl.arange(0, BLOCK_N)
    full_tiles = own_len // BLOCK_N if FAST else 0  # padding rows (q = 0) need no mask
    for t in range(0, full_tiles):
        pos = t * BLOCK_N + offs_n
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, pos, pos < own_len,
                                       None, kv_head, sm_scale_log2, stride_kb, stride_ks, stride_kh,
                                       offs_d, d_mask, BLOCK_SIZE, False, WIDE)
    for t in range(full_tiles, tl.cdiv(own_len, BLOCK_N)):
        pos = t * BLOCK_N + offs_n
        pos_mask = pos < own_len
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, pos, pos_mask,
                                       pos_mask[None, :], kv_head, sm_scale_log2, stride_kb, stride_ks,
                                       stride_kh, offs_d, d_mask, BLOCK_SIZE, True, WIDE)
    lse = m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0))
    part = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    row = (part_slot * num_decodes + token) * (num_kv_heads * GQA_RATIO) + q_head
    tl.store(part_lse_ptr + row, lse, mask=row_valid)
    tl.store(part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], part,
             mask=row_valid[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["num_decodes", "num_splits"])
def decode_merge_kernel(
    part_o_ptr, part_lse_ptr, o_ptr, num_decodes, num_splits, stride_ot, stride_oh,
    NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The separate merge launch (MERGE_IN_LAUNCH off): one program per (decode, BLOCK_H heads)."""
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    hmask = heads < NUM_Q_HEADS
    d_mask = offs_d < HEAD_DIM
    tokens = tl.zeros([BLOCK_H], tl.int64) + token
    out = _merge_splits(part_o_ptr, part_lse_ptr, tokens, heads, hmask, offs_d, d_mask, num_splits,
                        num_decodes, NUM_Q_HEADS, HEAD_DIM)
    tl.store(o_ptr + token * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=hmask[:, None] & d_mask[None, :])


def _counter_buffer(device: torch.device, size: int) -> torch.Tensor:
    """Zeroed arrival counters, reused across launches (each merge resets its own to zero)."""
    buf = _counters.get(device)
    if buf is None or buf.numel() < size:
        if buf is not None:
            _retired.append(buf)
        buf = torch.zeros(max(size, 4096), dtype=torch.int32, device=device)
        _counters[device] = buf
    return buf


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for the own-segment launch (forked and joined in each call,
    so a captured CUDA graph holds the two launches as parallel branches)."""
    stream = _streams.get(device)
    if stream is None:
        stream = _streams[device] = torch.cuda.Stream(device)
    return stream


def prefix_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor,
    *,
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    merge_in_launch: bool = False,
    num_warps: int | None = None,
    num_stages: int = 3,
    separate_own: bool | None = None,
    heads_first: bool = True,
    overlap_own: bool | None = None,
    merge_heads: int = 8,
    fast_tiles: bool = True,
    wide_offsets: bool | None = None,
) -> None:
    """Attention of the step's decode tokens (rows 0:num_decodes of q) into `out`, in place."""
    # q, out: [num_tokens, num_q_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim]
    num_decodes = meta.num_decodes
    if num_decodes == 0:
        return
    _, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if k_cache.stride() != v_cache.stride():
        raise ValueError("the K and V caches must share one layout (the kernel reads both at one offset)")
    gqa = num_q_heads // num_kv_heads
    num_groups = int(meta.decode_group_shared.shape[0])
    auto_m, slots, auto_splits = decode_launch_shape(
        num_decodes, num_groups, gqa, num_kv_heads, meta.max_kv_len, q.device)
    block_m = block_m or auto_m
    splits = num_splits or auto_splits
    items = block_m // gqa
    if items < 1:
        raise ValueError(f"block_m {block_m} is smaller than the GQA ratio {gqa}")
    slots = max(1, min(num_decodes, num_groups + num_decodes // items))
    block_n = block_n or decode_block_n(block_m, splits, meta.max_kv_len)
    own_apart = separate_own if separate_own is not None else own_segments_apart(block_m, gqa)
    fast = fast_tiles and next_pow2(head_dim) == head_dim
    # int64 offsets where the cache needs them, and at 16-row tiles: measured there (64x4, H100,
    # tune_decode run 5) 260 vs 273 us with int32; taller tiles ran 1-3% faster with int32.
    wide = wide_offsets if wide_offsets is not None else block_m <= 16 or needs_wide_offsets(k_cache)
    states = splits + 1 if own_apart else splits
    merge_in_launch = merge_in_launch and not own_apart
    if states > 1:
        part_o = torch.empty((states, num_decodes, num_q_heads, head_dim), dtype=torch.float32,
                             device=q.device)
        part_lse = torch.empty((states, num_decodes, num_q_heads), dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out  # unused
    counters = _counter_buffer(q.device, slots * num_kv_heads) if splits > 1 and merge_in_launch else out

    def launch_prefix() -> None:
        grid = (num_kv_heads, slots, splits) if heads_first else (slots, num_kv_heads, splits)
        prefix_decode_kernel[grid](
            q, k_cache, v_cache, out, part_o, part_lse, counters,
            meta.decode_group_ptr, meta.decode_group_shared, meta.own_ctx_lens, meta.own_block_tables,
            meta.shared_lens, meta.shared_block_tables,
            num_groups, num_decodes, splits, num_kv_heads, scale * _LOG2E,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            meta.own_block_tables.stride(0), meta.shared_block_tables.stride(0),
            GQA_RATIO=gqa, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
            BLOCK_M=block_m, ITEMS=items, ITEMS_P2=max(16, next_pow2(items)), BLOCK_N=block_n,
            BLOCK_SIZE=meta.block_size, SPLIT=states > 1, MERGE_IN_LAUNCH=merge_in_launch, SCAN=_SCAN,
            OWN_IN_TILE=not own_apart, HEADS_FIRST=heads_first, FAST=fast, WIDE=wide,
            # 4 warps (one warpgroup) up to 64 rows; 128 rows need 8 to stay in registers.
            num_warps=num_warps or (8 if block_m >= 128 else 4), num_stages=num_stages,
        )

    def launch_own() -> None:
        grid = (num_kv_heads, num_decodes) if heads_first else (num_decodes, num_kv_heads)
        own_decode_kernel[grid](
            q, k_cache, v_cache, part_o, part_lse, meta.own_ctx_lens, meta.own_block_tables,
            num_decodes, splits, num_kv_heads, scale * _LOG2E,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            meta.own_block_tables.stride(0),
            GQA_RATIO=gqa, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
            BLOCK_M=max(16, next_pow2(gqa)), BLOCK_N=block_n, BLOCK_SIZE=meta.block_size,
            HEADS_FIRST=heads_first, FAST=fast, WIDE=wide, num_warps=4, num_stages=num_stages,
        )

    if overlap_own is None:
        overlap_own = q.device.type == "cuda" and not interpreting()
    if not own_apart:
        launch_prefix()
    elif not overlap_own:
        launch_prefix()
        launch_own()
    else:  # own segments on a side stream, side by side with the prefix launch; the merge waits
        main = torch.cuda.current_stream(q.device)
        side = _side_stream(q.device)
        side.wait_stream(main)
        launch_prefix()
        with torch.cuda.stream(side):
            launch_own()
        main.wait_stream(side)
    if states > 1 and not merge_in_launch:
        block_h = min(merge_heads, next_pow2(num_q_heads))
        decode_merge_kernel[(num_decodes, triton.cdiv(num_q_heads, block_h))](
            part_o, part_lse, out, num_decodes, states, out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_H=block_h,
            BLOCK_D=next_pow2(head_dim), num_warps=4,
        )
