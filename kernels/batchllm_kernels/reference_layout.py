"""Gather indices and masks for the reference attention, derived once per step from its metadata.

Every layer of a step reads the same `AttentionMetadata`, so the index tensors (which KV row
each padded key is, which token each padded query is, the causal masks) are built on the first
layer and reused by the others: a one-entry cache keyed by the metadata object's identity, and
checked against a snapshot of its tensors so that a metadata object refilled in place for the
next step is not mistaken for the last one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields

import torch

from batchllm_kernels.metadata import AttentionMetadata


@dataclass(frozen=True)
class OwnBatch:
    """Items of similar shape padded together for their own (causal) segments."""

    token_index: torch.Tensor  # [num_items, max_q] int64 row into q (padding: 0)
    token_valid: torch.Tensor  # [num_items, max_q] bool
    kv_index: torch.Tensor  # [num_items, kv_heads, max_kv] int64 row of cache.view(-1, head_dim)
    mask: torch.Tensor  # [num_items, max_q, max_kv] bool, True = query sees key

    @property
    def size(self) -> int:
        return int(self.token_index.shape[0])


@dataclass(frozen=True)
class SharedSegment:
    """One shared prefix segment and every query token that attends to it."""

    kv_index: torch.Tensor  # [kv_heads, shared_len] int64 row of cache.view(-1, head_dim)
    token_index: torch.Tensor  # [num_queries] int64


@dataclass(frozen=True)
class AttentionLayout:
    own_batches: tuple[OwnBatch, ...]
    shared_segments: tuple[SharedSegment, ...]


_LAYOUT_FIELDS = ("cu_seqlens_q", "own_ctx_lens", "own_block_tables", "shared_ids", "shared_lens",
                  "shared_block_tables")
_cache: tuple[weakref.ReferenceType, tuple, tuple[torch.Tensor, ...], AttentionLayout] | None = None


def layout_for(meta: AttentionMetadata, device: torch.device, num_kv_heads: int) -> AttentionLayout:
    """The layout of `meta`, built on its first use and reused while `meta` is the current step."""
    global _cache
    key = (device, num_kv_heads, meta.block_size, meta.num_decodes)
    tensors = tuple(getattr(meta, name) for name in _LAYOUT_FIELDS)
    if _cache is not None and _cache[0]() is meta and _cache[1] == key:
        if all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(tensors, _cache[2])):
            return _cache[3]
    layout = build_layout(meta, device, num_kv_heads)
    _cache = (weakref.ref(meta), key, tuple(t.clone() for t in tensors), layout)
    return layout


def _head_rows(slots: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[..., kv_len] slots -> [..., kv_heads, kv_len] rows of the cache viewed as [-1, head_dim]."""
    heads = torch.arange(num_kv_heads, dtype=torch.int64)[:, None]
    return slots.unsqueeze(-2) * num_kv_heads + heads


def _slots(tables: torch.Tensor, lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flattened-cache slots of positions 0..max(lens)-1 of each row (padding points at slot 0)."""
    # tables: [rows, max_blocks]; lens: [rows] -> [rows, max(lens)]
    width = int(lens.max()) if lens.numel() else 0
    pos = torch.arange(width, dtype=torch.int64)
    blk = (pos // block_size).clamp(max=tables.shape[1] - 1)
    slots = tables.long()[:, blk] * block_size + pos % block_size
    return torch.where(pos[None, :] < lens[:, None], slots, 0)


def _own_batch(
    items: torch.Tensor, cu: torch.Tensor, ctx: torch.Tensor, tables: torch.Tensor, block_size: int,
    num_kv_heads: int,
) -> OwnBatch:
    q_lens = cu[items + 1] - cu[items]
    kv_lens = ctx[items] + q_lens
    max_q = int(q_lens.max())
    j = torch.arange(max_q, dtype=torch.int64)
    token_valid = j[None, :] < q_lens[:, None]  # [n, max_q]
    token_index = torch.where(token_valid, cu[items][:, None] + j[None, :], 0)
    kv_slots = _slots(tables[items], kv_lens, block_size)
    key = torch.arange(kv_slots.shape[1], dtype=torch.int64)
    # Query j of an item sees own positions 0 .. ctx + j (causal).
    mask = key[None, None, :] <= (ctx[items][:, None] + j[None, :])[:, :, None]
    mask &= token_valid[:, :, None]
    return OwnBatch(token_index, token_valid, _head_rows(kv_slots, num_kv_heads), mask)


def _buckets(items: torch.Tensor, q_lens: torch.Tensor, kv_lens: torch.Tensor) -> list[torch.Tensor]:
    """Splits items into batches whose padded area (q x kv) is at most twice their real area.

    Items are taken by growing KV length, so a long item does not pad a crowd of short ones.
    """
    if items.numel() == 0:
        return []
    order = items[torch.argsort(kv_lens[items], stable=True)].tolist()
    out: list[list[int]] = []
    real = max_q = max_kv = 0
    for i in order:
        q, kv = int(q_lens[i]), int(kv_lens[i])
        new_q, new_kv = max(max_q, q), max(max_kv, kv)
        padded = (len(out[-1]) + 1) * new_q * new_kv if out else 0
        if out and padded <= 2 * (real + q * kv):
            out[-1].append(i)
            real, max_q, max_kv = real + q * kv, new_q, new_kv
        else:
            out.append([i])
            real, max_q, max_kv = q * kv, q, kv
    return [torch.tensor(b, dtype=torch.int64) for b in out]


def build_layout(meta: AttentionMetadata, device: torch.device, num_kv_heads: int) -> AttentionLayout:
    """Derives every gather index and mask of one step on the host, then moves them to `device`."""
    cu = meta.cu_seqlens_q.cpu().long()
    ctx = meta.own_ctx_lens.cpu().long()
    tables = meta.own_block_tables.cpu()
    shared_ids = meta.shared_ids.cpu().long()
    num_items = meta.num_items
    bs = meta.block_size

    q_lens = cu[1:] - cu[:-1]
    kv_lens = ctx + q_lens
    batches = []
    decodes = torch.arange(meta.num_decodes, dtype=torch.int64)
    prefills = torch.arange(meta.num_decodes, num_items, dtype=torch.int64)
    for items in (decodes, prefills):
        for bucket in _buckets(items, q_lens, kv_lens):
            batches.append(_own_batch(bucket, cu, ctx, tables, bs, num_kv_heads))

    segments = []
    shared_lens = meta.shared_lens.cpu().long()
    shared_tables = meta.shared_block_tables.cpu()
    for s in torch.unique(shared_ids[shared_ids >= 0]).tolist():
        length = int(shared_lens[s])
        if length == 0:
            continue
        members = torch.nonzero(shared_ids == s).flatten()
        tokens = torch.cat([torch.arange(int(cu[i]), int(cu[i + 1])) for i in members.tolist()])
        slots = _slots(shared_tables[s : s + 1], shared_lens[s : s + 1], bs)[0]
        segments.append(SharedSegment(_head_rows(slots, num_kv_heads), tokens.long()))

    def move(x):
        return type(x)(*(getattr(x, f.name).to(device) for f in fields(x)))

    return AttentionLayout(tuple(move(b) for b in batches), tuple(move(s) for s in segments))
