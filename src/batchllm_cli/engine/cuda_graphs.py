"""CUDA graphs of decode-only steps: one model forward replayed with the step's layout as input.

A decode step launches a few hundred small kernels (every layer's norms, projections, rotary,
KV store and attention); at batch sizes up to a few hundred the GPU finishes each faster than
Python issues the next, so a step costs its launches, not its math. A captured graph issues all
of them at once.

What a graph may not change between replays: tensor shapes, kernel arguments, launch grids.
So each graph serves one *key*: a padded batch size B (a bucket), and the decode kernel's tile
height and split count. Everything else is data in static buffers, refilled before each replay:
token ids, positions, slots, own and shared block tables, and the group layout
(`decode_group_ptr` / `decode_group_shared`, padded to B groups). The n real decodes fill rows
0..n-1; the B - n padding rows are decodes of their own with no shared prefix, no cached
tokens and slot -1 (the KV store skips them), whose outputs are never read. Graphs are captured
lazily, the first time a key is seen (that step runs eagerly on the static buffers, then is
captured), and share one memory pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.decode_launch import decode_launch_shape

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
MAX_GRAPHS = 48  # keys beyond this run eagerly (each graph holds its own launch records)


@dataclass(frozen=True)
class DecodeLayout:
    """The host arrays of one padded decode step (shapes fixed by the bucket and widths)."""

    input_ids: np.ndarray  # [B] int64
    positions: np.ndarray  # [B] int64
    own_ctx_lens: np.ndarray  # [B] int32
    own_block_tables: np.ndarray  # [B, own_width] int32
    shared_ids: np.ndarray  # [B] int32
    shared_lens: np.ndarray  # [B] int32
    shared_block_tables: np.ndarray  # [B, shared_width] int32
    slot_mapping: np.ndarray  # [B] int64
    decode_group_ptr: np.ndarray  # [B + 1] int32
    decode_group_shared: np.ndarray  # [B] int32
    num_groups: int  # real decode groups (before the padding groups)
    max_kv_len: int


def bucket_for(n: int) -> int | None:
    """The smallest bucket that holds n decodes; None when none does."""
    for b in BUCKETS:
        if b >= n:
            return b
    return None


def pad_decode_layout(
    block_size: int,
    token_ids: Sequence[int],
    positions: Sequence[int],
    own_ctx_lens: Sequence[int],
    own_block_tables: Sequence[Sequence[int]],
    shared_ids: Sequence[int],
    shared_lens: Sequence[int],
    shared_block_tables: Sequence[Sequence[int]],
    size: int,
    own_width: int,
    shared_width: int,
) -> DecodeLayout:
    """The layout of n decode items (kernel order: grouped by shared id) padded to `size` rows,
    block tables `own_width` / `shared_width` columns wide.

    Each decode's new token sits at own position own_ctx_lens[i] (its KV is stored there)."""
    n, s = len(token_ids), len(shared_lens)
    if n > size or s > size:
        raise ValueError(f"{n} decodes / {s} shared segments do not fit a graph of {size}")
    ids = np.zeros(size, np.int64)
    ids[:n] = token_ids
    pos = np.zeros(size, np.int64)
    pos[:n] = positions
    ctx = np.zeros(size, np.int32)
    ctx[:n] = own_ctx_lens
    own = np.zeros((size, own_width), np.int32)
    slots = np.full(size, -1, np.int64)
    for i, table in enumerate(own_block_tables):
        own[i, : len(table)] = table
        c = own_ctx_lens[i]
        slots[i] = int(table[c // block_size]) * block_size + c % block_size
    sid = np.full(size, -1, np.int32)
    sid[:n] = shared_ids
    slen = np.zeros(size, np.int32)
    slen[:s] = shared_lens
    stab = np.zeros((size, shared_width), np.int32)
    for j, table in enumerate(shared_block_tables):
        stab[j, : len(table)] = table
    # groups: runs of decodes with one shared id (a decode without one is its own run), then
    # one group per padding row, then empty groups up to `size`
    starts = [i for i in range(n) if i == 0 or sid[i] < 0 or sid[i] != sid[i - 1]]
    ptr = np.full(size + 1, size, np.int32)
    ptr[: len(starts)] = starts
    num_groups = len(starts)
    ptr[num_groups : num_groups + size - n] = np.arange(n, size, dtype=np.int32)
    gshared = np.full(size, -1, np.int32)
    gshared[:num_groups] = sid[starts] if starts else []
    kv = [(shared_lens[sid[i]] if sid[i] >= 0 else 0) + own_ctx_lens[i] + 1 for i in range(n)]
    return DecodeLayout(ids, pos, ctx, own, sid, slen, stab, slots, ptr, gshared, num_groups, max(kv, default=1))


def launch_key(layout: DecodeLayout, num_decodes: int, gqa: int, num_kv_heads: int, device: Any) -> tuple[int, int]:
    """(tile height, splits) the decode kernel would choose for the real decodes, with the
    split count rounded down to a power of two so that few keys cover a whole job."""
    block_m, _, splits = decode_launch_shape(
        num_decodes, layout.num_groups, gqa, num_kv_heads, layout.max_kv_len, device
    )
    return block_m, 1 << int(math.log2(max(1, splits)))


class DecodeGraphs:
    """Captured decode steps of one model and KV cache; `run` replays or captures one."""

    def __init__(self, model: torch.nn.Module, kv_caches: list, block_size: int, max_model_len: int,
                 device: torch.device) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.width = -(-max_model_len // block_size)  # block-table columns: a whole context
        cfg = model.config
        self.gqa = cfg.num_heads // cfg.num_kv_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.max_size = BUCKETS[-1]
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: Any = None
        self.replays = 0
        self.captures = 0

    def fits(self, num_decodes: int) -> bool:
        return 0 < num_decodes <= self.max_size

    def run(self, layout_args: dict[str, Any], num_decodes: int) -> torch.Tensor:
        """hidden [num_decodes, hidden] of a decode-only step (pad_decode_layout's arguments)."""
        size = bucket_for(num_decodes)
        assert size is not None
        own_w = max((len(t) for t in layout_args["own_block_tables"]), default=1) or 1
        shared_w = max((len(t) for t in layout_args["shared_block_tables"]), default=1) or 1
        if max(own_w, shared_w) > self.width:
            raise ValueError(f"a block table of {max(own_w, shared_w)} blocks exceeds the context's {self.width}")
        layout = pad_decode_layout(self.block_size, size=size, own_width=own_w,
                                   shared_width=shared_w, **layout_args)
        block_m, splits = launch_key(layout, num_decodes, self.gqa, self.num_kv_heads, self.device)
        buf = self._static(size)
        self._fill(buf, layout)
        key = (size, block_m, splits)
        entry = self._graphs.get(key)
        if entry is not None:
            entry[0].replay()
            self.replays += 1
            return entry[1][:num_decodes]
        meta = self._meta(buf, size, block_m, splits)
        if len(self._graphs) >= MAX_GRAPHS:
            return self._forward(buf, meta)[:num_decodes]
        # this step, eagerly on a side stream: compiles the kernels and warms up the libraries
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self._forward(buf, meta)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._forward(buf, meta)
        self._graphs[key] = (graph, static_out)
        self.captures += 1
        return out[:num_decodes]

    def _forward(self, buf: dict[str, torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        return self.model(buf["input_ids"], buf["positions"], meta, self.kv_caches)

    def _static(self, size: int) -> dict[str, torch.Tensor]:
        buf = self._buffers.get(size)
        if buf is None:
            dev, w = self.device, self.width

            def z(*shape: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
                return torch.zeros(shape, dtype=dtype, device=dev)

            buf = {
                "input_ids": z(size, dtype=torch.int64), "positions": z(size, dtype=torch.int64),
                "own_ctx_lens": z(size), "own_block_tables": z(size, w), "shared_ids": z(size),
                "shared_lens": z(size), "shared_block_tables": z(size, w),
                "slot_mapping": z(size, dtype=torch.int64), "decode_group_ptr": z(size + 1),
                "decode_group_shared": z(size),
                "cu_seqlens_q": torch.arange(size + 1, dtype=torch.int32, device=dev),
            }
            self._buffers[size] = buf
        return buf

    def _fill(self, buf: dict[str, torch.Tensor], layout: DecodeLayout) -> None:
        """Copies the layout into the static buffers; of the block tables only the columns in
        use (the kernels never read a row past its length, so older columns may stay)."""
        for name, tensor in buf.items():
            if name == "cu_seqlens_q":
                continue
            host = torch.from_numpy(getattr(layout, name))
            if host.dim() == 2:
                tensor[:, : host.shape[1]].copy_(host)
            else:
                tensor.copy_(host)

    def _meta(self, buf: dict[str, torch.Tensor], size: int, block_m: int, splits: int) -> AttentionMetadata:
        return AttentionMetadata(
            block_size=self.block_size, num_decodes=size, max_q_len=1,
            max_kv_len=self.width * self.block_size,
            cu_seqlens_q=buf["cu_seqlens_q"], own_ctx_lens=buf["own_ctx_lens"],
            own_block_tables=buf["own_block_tables"], shared_ids=buf["shared_ids"],
            shared_lens=buf["shared_lens"], shared_block_tables=buf["shared_block_tables"],
            slot_mapping=buf["slot_mapping"], decode_group_ptr=buf["decode_group_ptr"],
            decode_group_shared=buf["decode_group_shared"],
            decode_block_m=block_m, decode_splits=splits,
        )
