"""Small helpers shared by the Triton kernels and their launchers (no kernels here)."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    """Multiprocessors of `device`; a small stand-in under the interpreter (work splits stay tested)."""
    if device.type != "cuda" or interpreting():
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


_compiles = 0


def _count_compile(**_: object) -> None:
    global _compiles
    _compiles += 1


def kernel_variants_compiled() -> int:
    """Triton kernel variants this process has compiled (loaded into memory, from Triton's disk
    cache or built) since the first call: a run that shows a rise compiled inside it. Installs
    a post-compile hook on the first call; 0 forever when another hook is already installed."""
    from triton import knobs

    hook = knobs.runtime.jit_post_compile_hook
    if hook is None:
        knobs.runtime.jit_post_compile_hook = _count_compile
    return _compiles


def needs_wide_offsets(cache: torch.Tensor) -> bool:
    """Whether element offsets into `cache` can pass 2**31 - 1 (then kernels compute them in int64)."""
    return sum((n - 1) * st for n, st in zip(cache.shape, cache.stride())) >= 2**31 - 1


# Triton's interpreter multiplies bfloat16 tiles wrongly (triton 3.9): there, products run in
# float32 on the already-rounded operands, which is what the GPU's tensor cores compute too.
_DOT_IN_F32 = tl.constexpr(interpreting())


@triton.jit
def dot(a, b):
    """tl.dot(a, b) with a float32 accumulator (see _DOT_IN_F32)."""
    if _DOT_IN_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b)


@triton.jit
def find_tile(ptr_ptr, num_entries, tile, PER_TILE: tl.constexpr, SCAN: tl.constexpr):
    """Maps a flat tile index to (entry, tiles before that entry) on the device.

    Entry e owns the rows ptr[e]:ptr[e+1] (a monotone pointer array such as cu_seqlens or
    decode_group_ptr) and is cut into cdiv(rows, PER_TILE) tiles, numbered entry by entry.
    Computing this in the kernel (instead of a host-built map) keeps the launch free of host
    syncs and extra launches, so it can sit in a CUDA graph. entry == num_entries: past the end.
    """
    entry = 0
    before = 0
    base = 0
    for start in range(0, num_entries, SCAN):
        offs = start + tl.arange(0, SCAN)
        live = offs < num_entries
        lo = tl.load(ptr_ptr + offs, mask=live, other=0)
        hi = tl.load(ptr_ptr + offs + 1, mask=live, other=0)
        tiles = tl.where(live, (hi - lo + PER_TILE - 1) // PER_TILE, 0)
        ends = tl.cumsum(tiles, 0) + base  # tile index just past each entry's tiles
        done = live & (ends <= tile)
        entry += tl.sum(done.to(tl.int32), 0)
        before += tl.sum(tl.where(done, tiles, 0), 0)
        base += tl.sum(tiles, 0)
    return entry, before


@triton.jit
def kv_tile_offsets(table_row_ptr, pos, pos_mask, kv_head, stride_b, stride_s, stride_h, offs_d,
                    BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, WIDE: tl.constexpr):
    """Element offsets [BLOCK_N, BLOCK_D] of token positions `pos` of one paged sequence.

    K and V caches share one layout, so one set of offsets (and one block-table read) serves both.
    MASKED=False: every position is in range (no mask on the block-table read). WIDE: int64
    offsets, needed once a cache has 2**31 elements; int32 ones cost fewer instructions.
    """
    if MASKED:
        blk = tl.load(table_row_ptr + pos // BLOCK_SIZE, mask=pos_mask, other=0)
    else:
        blk = tl.load(table_row_ptr + pos // BLOCK_SIZE)
    if WIDE:
        row = (blk.to(tl.int64) * stride_b + (pos % BLOCK_SIZE).to(tl.int64) * stride_s
               + kv_head.to(tl.int64) * stride_h)
    else:
        row = blk * stride_b + (pos % BLOCK_SIZE) * stride_s + kv_head * stride_h
    return row[:, None] + offs_d[None, :]


@triton.jit
def attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table, pos, pos_mask, visible, kv_head,
                   sm_scale_log2, stride_kb, stride_ks, stride_kh, offs_d, d_mask,
                   BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, WIDE: tl.constexpr):
    """Folds one KV tile (positions `pos` of the paged sequence `table`) into the rows' running
    state. MASKED: keys outside `pos_mask` are not read and scores outside `visible` ([M, N] or
    broadcastable) are hidden. MASKED=False is the fast path for a tile whose keys all exist and
    are all seen by every row, with head_dim == BLOCK_D: no masks at all."""
    offs = kv_tile_offsets(table, pos, pos_mask, kv_head, stride_kb, stride_ks, stride_kh, offs_d,
                           BLOCK_SIZE, MASKED, WIDE)
    if MASKED:
        kv_mask = pos_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + offs, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + offs, mask=kv_mask, other=0.0)
        qk = dot(q, tl.trans(k)) * sm_scale_log2
        qk = tl.where(visible, qk, float("-inf"))
    else:
        k = tl.load(k_cache_ptr + offs)
        v = tl.load(v_cache_ptr + offs)
        qk = dot(q, tl.trans(k)) * sm_scale_log2
    return online_softmax_step(acc, m_i, l_i, qk, v)


@triton.jit
def online_softmax_step(acc, m_i, l_i, qk, v):
    """One flash-attention update with a tile of scores (log2 units, hidden keys at -inf).

    m_i starts at a large finite negative number, not -inf, so that a row whose keys are all
    hidden in this tile keeps alpha = 1 and p = 0 instead of producing nan.
    """
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v)
    return acc, m_new, l_i
