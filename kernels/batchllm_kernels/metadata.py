"""The layout of one step's attention, built once on the host and read by every layer.

A step is a list of *items*. An item is a run of consecutive new tokens of one sequence: a
prefill chunk (q_len >= 1) or one decode token (q_len == 1). Each item attends to two KV
segments, both in the paged cache ([num_blocks, block_size, num_kv_heads, head_dim] per layer):

- its *shared* segment: the prefix of its prefix-sharing group, `shared_lens[s]` tokens in the
  blocks `shared_block_tables[s]`, where `s = shared_ids[item]` (-1: the item has none). Every
  query sees the whole shared segment (it lies before all of the item's own tokens).
- its *own* segment: `own_ctx_lens[item]` tokens already cached, followed by the item's
  `q_len` new tokens (already written to the cache through `slot_mapping` before attention),
  in the blocks `own_block_tables[item]`. Causal: the item's j-th new token sees own positions
  0 .. own_ctx_lens[item] + j.

A group's prefix, while it is being prefilled, is an ordinary item with no shared segment whose
own blocks are the prefix blocks. Items are ordered decodes first (the first `num_decodes`
items, q_len == 1), sorted by shared id so that the decodes of one group are contiguous, then
prefill items. `decode_group_ptr` / `decode_group_shared` describe those runs of decodes with a
common shared segment, for the prefix-shared decode kernel.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class AttentionMetadata:
    """One step's attention layout (see the module docstring). Tensors live on the model's device."""

    block_size: int
    num_decodes: int  # the first num_decodes items are single-token decodes
    max_q_len: int  # host int: the longest item, for launch grids
    max_kv_len: int  # host int: the longest shared_len + own_ctx_len + q_len of any item

    cu_seqlens_q: torch.Tensor  # [num_items + 1] int32: item i owns tokens cu[i]:cu[i+1]
    own_ctx_lens: torch.Tensor  # [num_items] int32
    own_block_tables: torch.Tensor  # [num_items, max_own_blocks] int32, padded with 0
    shared_ids: torch.Tensor  # [num_items] int32, row of shared_block_tables or -1
    shared_lens: torch.Tensor  # [num_shared] int32
    shared_block_tables: torch.Tensor  # [num_shared, max_shared_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [num_tokens] int64: block * block_size + offset of each new token
    decode_group_ptr: torch.Tensor  # [num_decode_groups + 1] int32: decode items of group g
    decode_group_shared: torch.Tensor  # [num_decode_groups] int32: their shared id (-1: none)
    # Launch shape of the prefix-shared decode kernel, fixed by the caller (a CUDA graph replays
    # one shape for many layouts); None: chosen from this layout.
    decode_block_m: int | None = None
    decode_splits: int | None = None

    @property
    def num_items(self) -> int:
        return int(self.cu_seqlens_q.shape[0]) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @classmethod
    def build(
        cls,
        *,
        block_size: int,
        q_lens: list[int],
        own_ctx_lens: list[int],
        own_block_tables: list[list[int]],
        shared_ids: list[int],
        shared_lens: list[int],
        shared_block_tables: list[list[int]],
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """Builds the tensors from host lists; items must already be in kernel order."""
        layout = HostLayout.build(block_size, q_lens, own_ctx_lens, own_block_tables, shared_ids,
                                  shared_lens, shared_block_tables)
        return layout.to_device(device)


def int_specialization(value: int) -> int:
    """The class Triton compiles an integer kernel argument for (unless do_not_specialize names
    it): 1, a multiple of 16, or anything else."""
    return 1 if value == 1 else 16 if value % 16 == 0 else 0


def ragged_table(rows: Sequence[Sequence[int]], width: int | None = None, height: int | None = None) -> np.ndarray:
    """[height, width] int32 (default: rows x the longest row, at least 1 column), rows padded with 0."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = width if width is not None else max(int(lens.max(initial=0)), 1)
    out = np.zeros((height if height is not None else len(rows), width), dtype=np.int32)
    if len(rows) and lens.sum():
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lens.sum()))
        out[: len(rows)][np.arange(width)[None, :] < lens[:, None]] = flat
    return out


@dataclass
class HostLayout:
    """AttentionMetadata's arrays on the host (numpy), built once per step with no per-token
    Python loop; `to_device` uploads them in two packed copies (int32 and int64)."""

    block_size: int
    num_decodes: int
    max_q_len: int
    max_kv_len: int
    cu_seqlens_q: np.ndarray  # [num_items + 1] int32
    own_ctx_lens: np.ndarray  # [num_items] int32
    own_block_tables: np.ndarray  # [num_items, w] int32
    shared_ids: np.ndarray  # [num_items] int32
    shared_lens: np.ndarray  # [num_shared] int32
    shared_block_tables: np.ndarray  # [num_shared, ws] int32
    slot_mapping: np.ndarray  # [num_tokens] int64
    decode_group_ptr: np.ndarray  # [num_decode_groups + 1] int32
    decode_group_shared: np.ndarray  # [num_decode_groups] int32
    # blocks the kernels read: of any item's own segment (its new tokens included) / any shared one
    own_width: int = 1
    shared_width: int = 1

    INT32_FIELDS = ("cu_seqlens_q", "own_ctx_lens", "own_block_tables", "shared_ids", "shared_lens",
                    "shared_block_tables", "decode_group_ptr", "decode_group_shared")

    @property
    def num_decode_groups(self) -> int:
        return int(self.decode_group_shared.shape[0])

    def specialization(self, gqa_ratio: int, num_kv_heads: int, device: torch.device) -> tuple[int, ...]:
        """What the Triton kernels of an eager step compile for, besides the model's shapes: the
        integer classes (int_specialization) of the step's counts and of its block tables'
        widths (the tables' row strides), which the kernels take as arguments, and the decode
        kernel's launch choice (tile height, splits, keys per tile: compile-time constants). Two
        steps with one specialization use the same variants, so a start-up warm-up that runs one
        step of each compiles all of a job's variants."""
        from batchllm_kernels.decode_launch import decode_block_n, decode_launch_shape

        counts = (int(self.slot_mapping.shape[0]), self.num_decodes, int(self.own_ctx_lens.shape[0]),
                  self.num_decode_groups, int(self.shared_lens.shape[0]), self.max_q_len,
                  self.own_width, self.shared_width)
        decode = (0, 0, 0)
        if self.num_decodes:
            kv = max(self.max_kv_len, 1)
            block_m, _, splits = decode_launch_shape(self.num_decodes, self.num_decode_groups, gqa_ratio,
                                                     num_kv_heads, kv, device)
            decode = (block_m, splits, decode_block_n(block_m, splits, kv))
        return (tuple(int_specialization(c) for c in counts) + decode
                + (self.num_decodes > 0, counts[0] > self.num_decodes))

    @classmethod
    def build(
        cls,
        block_size: int,
        q_lens: Sequence[int],
        own_ctx_lens: Sequence[int],
        own_block_tables: Sequence[Sequence[int]],
        shared_ids: Sequence[int],
        shared_lens: Sequence[int],
        shared_block_tables: Sequence[Sequence[int]],
        *,
        tables: bool = True,
    ) -> "HostLayout":
        """The layout of items in kernel order (see the module docstring).

        tables=False: the block tables are left out (zero columns; the caller gathers them on
        the device, engine/block_tables.py), and only the blocks the new tokens are stored in
        are read, for the slot mapping."""
        q = np.asarray(q_lens, dtype=np.int64).reshape(-1)
        ctx = np.asarray(own_ctx_lens, dtype=np.int32).reshape(-1)
        sid = np.asarray(shared_ids, dtype=np.int32).reshape(-1)
        slens = np.asarray(shared_lens, dtype=np.int32).reshape(-1)
        n = int(q.shape[0])
        not_single = np.flatnonzero(q != 1)
        num_decodes = int(not_single[0]) if not_single.size else n
        cu = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(q, out=cu[1:])
        # slot of each new token: item i's j-th token sits at own position ctx[i] + j, in the
        # blocks first[i]..last[i] of its table
        item_of = np.repeat(np.arange(n), q)
        pos = ctx[item_of].astype(np.int64) + (np.arange(int(cu[-1]), dtype=np.int64) - cu[:-1][item_of])
        first = ctx.astype(np.int64) // block_size
        last = (ctx + q - 1) // block_size
        # the block of each token: its item's first touched block, or (for tokens of an item
        # spanning blocks) a later one; no per-item slice for the many items within one block
        block = np.fromiter(map(operator.getitem, own_block_tables, first.tolist()), dtype=np.int64,
                            count=n)[item_of]
        offset = pos // block_size - first[item_of]  # index among the item's touched blocks
        spans = np.flatnonzero(last > first)
        if spans.size:
            touched = ragged_table([own_block_tables[i][f : l + 1]
                                    for i, f, l in zip(spans.tolist(), first[spans].tolist(), last[spans].tolist())])
            row = np.zeros(n, dtype=np.int64)
            row[spans] = np.arange(spans.size)
            later = np.flatnonzero(offset > 0)
            block[later] = touched[row[item_of[later]], offset[later]]
        slots = block * block_size + pos % block_size
        own = ragged_table(own_block_tables) if tables else np.zeros((n, 0), np.int32)
        # runs of decodes with one shared segment; a decode without one is a run of its own
        d = sid[:num_decodes]
        starts = np.flatnonzero((d < 0) | (d != np.concatenate([[-2], d[:-1]])))
        ptr = np.append(starts, num_decodes).astype(np.int32)
        kv = np.where(sid >= 0, slens[np.maximum(sid, 0)] if slens.size else 0, 0) + ctx + q
        return cls(
            block_size=block_size,
            num_decodes=num_decodes,
            max_q_len=int(q.max(initial=0)),
            max_kv_len=int(kv.max(initial=0)),
            cu_seqlens_q=cu,
            own_ctx_lens=ctx,
            own_block_tables=own,
            shared_ids=sid,
            shared_lens=slens,
            shared_block_tables=ragged_table(shared_block_tables) if tables else np.zeros((len(slens), 0), np.int32),
            slot_mapping=slots,
            decode_group_ptr=ptr,
            decode_group_shared=d[starts].astype(np.int32),
            own_width=max(int(last.max(initial=0)) + 1, 1),
            shared_width=max(-(-int(slens.max(initial=0)) // block_size), 1),
        )

    def to_device(self, device: torch.device | str, **launch: int | None) -> AttentionMetadata:
        """AttentionMetadata on `device`: the int32 arrays in one packed copy, slots in another;
        from pinned memory without waiting on a CUDA device. `launch`: decode_block_m / splits."""
        meta, _ = self.to_device_with(device, [], **launch)
        return meta

    def to_device_with(self, device: torch.device | str, extra: Sequence[np.ndarray],
                       **launch: int | None) -> tuple[AttentionMetadata, list[torch.Tensor]]:
        """to_device, with `extra` int32 arrays in the same packed copy (views of it, returned)."""
        parts = [getattr(self, name) for name in self.INT32_FIELDS]
        views = upload_packed(parts + list(extra), torch.int32, device)
        (slots,) = upload_packed([self.slot_mapping], torch.int64, device)
        fields = dict(zip(self.INT32_FIELDS, views))
        meta = AttentionMetadata(block_size=self.block_size, num_decodes=self.num_decodes,
                                 max_q_len=self.max_q_len, max_kv_len=self.max_kv_len,
                                 slot_mapping=slots, **fields, **launch)
        return meta, views[len(parts):]


def upload_flat(arrays: Sequence[np.ndarray], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`arrays` flattened end to end into one tensor on `device`, in one transfer. On CUDA the
    host side is pinned and the copy non-blocking (stream-ordered: it never waits for the GPU)."""
    device = torch.device(device)
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    host = torch.from_numpy(flat).to(dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def upload_packed(arrays: Sequence[np.ndarray], dtype: torch.dtype, device: torch.device | str) -> list[torch.Tensor]:
    """`arrays` on `device` as views of one tensor, copied in one transfer (see upload_flat)."""
    packed = upload_flat(arrays, dtype, device)
    out, offset = [], 0
    for a in arrays:
        out.append(packed[offset : offset + a.size].view(a.shape))
        offset += a.size
    return out
