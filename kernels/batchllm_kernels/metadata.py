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

from dataclasses import dataclass

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
        num_items = len(q_lens)
        num_decodes = 0
        while num_decodes < num_items and q_lens[num_decodes] == 1:
            num_decodes += 1
        cu = [0]
        for q in q_lens:
            cu.append(cu[-1] + q)
        slots = slot_mapping(block_size, q_lens, own_ctx_lens, own_block_tables)
        # Runs of decodes with one shared segment; a decode without one is a run of its own.
        group_ptr: list[int] = []
        group_shared: list[int] = []
        for i in range(num_decodes):
            if i == 0 or shared_ids[i] < 0 or shared_ids[i] != shared_ids[i - 1]:
                group_ptr.append(i)
                group_shared.append(shared_ids[i])
        group_ptr.append(num_decodes)
        max_kv = 0
        for i in range(num_items):
            s = shared_ids[i]
            max_kv = max(max_kv, (shared_lens[s] if s >= 0 else 0) + own_ctx_lens[i] + q_lens[i])

        def table(rows: list[list[int]]) -> torch.Tensor:
            width = max((len(r) for r in rows), default=0) or 1
            out = np.zeros((len(rows), width), dtype=np.int32)
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return torch.from_numpy(out).to(device)

        def i32(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.int32, device=device)

        return cls(
            block_size=block_size,
            num_decodes=num_decodes,
            max_q_len=max(q_lens, default=0),
            max_kv_len=max_kv,
            cu_seqlens_q=i32(cu),
            own_ctx_lens=i32(own_ctx_lens),
            own_block_tables=table(own_block_tables),
            shared_ids=i32(shared_ids),
            shared_lens=i32(shared_lens),
            shared_block_tables=table(shared_block_tables),
            slot_mapping=torch.from_numpy(slots).to(device),
            decode_group_ptr=i32(group_ptr),
            decode_group_shared=i32(group_shared),
        )



def slot_mapping(
    block_size: int, q_lens: list[int], own_ctx_lens: list[int], own_block_tables: list[list[int]]
) -> np.ndarray:
    """[num_tokens] int64: the cache slot (block * block_size + offset) of each new token."""
    parts = []
    for q, ctx, table in zip(q_lens, own_ctx_lens, own_block_tables):
        pos = np.arange(ctx, ctx + q, dtype=np.int64)
        blocks = np.asarray(table, dtype=np.int64)[pos // block_size]
        parts.append(blocks * block_size + pos % block_size)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
