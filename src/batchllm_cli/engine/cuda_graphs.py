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
tokens and slot -1 (the KV store skips them), whose outputs are never read. A graph's key is
known from the host layout alone (`key_of`), so the engine's start-up warm-up
(engine/warmup.py) captures the keys a dry run of the job's schedule predicts (`capture`, on a
layout of padding rows alone); a key seen first during the run is captured then (that step runs
eagerly on the static buffers first). All graphs share one memory pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from batchllm_kernels.metadata import AttentionMetadata, HostLayout, upload_flat
from batchllm_kernels.decode_launch import decode_launch_shape

if TYPE_CHECKING:
    from batchllm_cli.engine.block_tables import DeviceBlockTables

@dataclass(frozen=True)
class Feed:
    """Input ids that the previous step sampled and the host has not seen yet: row rows[k] of
    this step's input ids is tokens[src[k]], read on the device."""

    rows: np.ndarray  # [k] int64
    src: np.ndarray  # [k] int64
    tokens: torch.Tensor  # the previous step's sampled tokens, on the device


BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
MAX_GRAPHS = 48  # keys beyond this run eagerly (each graph holds its own launch records)


@dataclass(frozen=True)
class DecodeLayout:
    """The host arrays of one padded decode step: a HostLayout of B rows and the token inputs."""

    host: HostLayout  # B rows: the n real decodes, then B - n padding decodes
    input_ids: np.ndarray  # [B] int64 (-1 where the token comes from the previous step)
    positions: np.ndarray  # [B] int64


def bucket_for(n: int) -> int | None:
    """The smallest bucket that holds n decodes; None when none does."""
    for b in BUCKETS:
        if b >= n:
            return b
    return None


def pad_layout(layout: HostLayout, input_ids: np.ndarray, positions: np.ndarray, size: int) -> DecodeLayout:
    """A decode-only HostLayout of n rows padded to `size` rows (see the module docstring)."""
    n, s = layout.num_decodes, int(layout.shared_lens.shape[0])
    if layout.num_decodes != int(layout.own_ctx_lens.shape[0]):
        raise ValueError("only a decode-only step can be padded for a graph")
    if n > size or s > size:
        raise ValueError(f"{n} decodes / {s} shared segments do not fit a graph of {size}")

    def pad(a: np.ndarray, fill: int, rows: int = size) -> np.ndarray:
        out = np.full((rows,) + a.shape[1:], fill, dtype=a.dtype)
        out[: a.shape[0]] = a
        return out

    g = layout.num_decode_groups
    # groups: the real runs, then one per padding row, then empty groups up to `size`
    ptr = np.full(size + 1, size, np.int32)
    ptr[:g] = layout.decode_group_ptr[:g]
    ptr[g : g + size - n] = np.arange(n, size, dtype=np.int32)
    host = replace(
        layout,
        num_decodes=size,
        cu_seqlens_q=np.arange(size + 1, dtype=np.int32),
        own_ctx_lens=pad(layout.own_ctx_lens, 0),
        own_block_tables=pad(layout.own_block_tables, 0),
        shared_ids=pad(layout.shared_ids, -1),
        shared_lens=pad(layout.shared_lens, 0),
        shared_block_tables=pad(layout.shared_block_tables, 0),
        slot_mapping=pad(layout.slot_mapping, -1),
        decode_group_ptr=ptr,
        decode_group_shared=pad(layout.decode_group_shared, -1),
    )
    return DecodeLayout(host, pad(input_ids.astype(np.int64), 0), pad(positions.astype(np.int64), 0))


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
) -> DecodeLayout:
    """The layout of n decode items (kernel order: grouped by shared id) padded to `size` rows.

    Each decode's new token sits at own position own_ctx_lens[i] (its KV is stored there)."""
    layout = HostLayout.build(block_size, [1] * len(token_ids), own_ctx_lens, own_block_tables,
                              shared_ids, shared_lens, shared_block_tables)
    return pad_layout(layout, np.asarray(token_ids), np.asarray(positions), size)


GraphKey = tuple[int, int, int]  # (bucket, decode tile height, decode splits)


def graph_key(layout: HostLayout, gqa: int, num_kv_heads: int, device: Any) -> GraphKey:
    """The key of a decode-only layout's graph: its bucket, and the (tile height, splits) the
    decode kernel would choose for the real decodes, with the split count rounded down to a
    power of two so that few keys cover a whole job. Host values only."""
    n = layout.num_decodes
    size = bucket_for(n)
    if size is None:
        raise ValueError(f"no graph holds a step of {n} decodes")
    block_m, _, splits = decode_launch_shape(
        n, layout.num_decode_groups, gqa, num_kv_heads, max(layout.max_kv_len, 1), device
    )
    return size, block_m, 1 << int(math.log2(max(1, splits)))


# The static buffers of one bucket: 1-D int32 fields packed in one tensor (one copy fills them)
_STATIC32 = ("own_ctx_lens", "shared_ids", "shared_lens", "decode_group_ptr", "decode_group_shared")
_STATIC64 = ("input_ids", "positions", "slot_mapping")


class DecodeGraphs:
    """Captured decode steps of one model and KV cache; `run` replays or captures one."""

    def __init__(self, model: torch.nn.Module, kv_caches: list, block_size: int, max_model_len: int,
                 device: torch.device, pool: Any = None) -> None:
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
        self._graphs: dict[GraphKey, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: Any = pool  # a graph memory pool, shared with other graphs; None: made at the first capture
        self.replays = 0
        self.captures = 0

    def fits(self, num_decodes: int) -> bool:
        return 0 < num_decodes <= self.max_size

    def key_of(self, layout: HostLayout) -> GraphKey:
        """The graph a decode-only step of this layout replays: (bucket, tile height, splits)."""
        return graph_key(layout, self.gqa, self.num_kv_heads, self.device)

    def has(self, key: GraphKey) -> bool:
        return key in self._graphs

    @property
    def full(self) -> bool:
        return len(self._graphs) >= MAX_GRAPHS

    def capture(self, key: GraphKey) -> None:
        """Captures `key`'s graph ahead of any step that needs it (start-up warm-up): the static
        buffers hold `key[0]` padding rows, which store no KV and read none."""
        if self.has(key) or self.full:
            return
        size, block_m, splits = key
        empty = HostLayout.build(self.block_size, [], [], [], [], [], [])
        none = np.zeros(0, np.int64)
        buf = self._static(size)
        no_rows = np.zeros(0, np.int32)
        self._fill(buf, pad_layout(empty, none, none, size), (1, 1), None, (no_rows, no_rows), None)
        self._capture(key, buf, self._meta(buf, size, block_m, splits))

    def run(self, layout: HostLayout, key: GraphKey, input_ids: np.ndarray, positions: np.ndarray,
            tables: DeviceBlockTables, rows: tuple[np.ndarray, np.ndarray],
            feed: Feed | None = None) -> torch.Tensor:
        """hidden [n, hidden] of a decode-only step of n decodes (a HostLayout in kernel order,
        `key` its key_of), whose block tables are `rows` (own [n], shared [s]) of `tables`;
        `feed` overwrites some input ids on the device."""
        n = layout.num_decodes
        size = key[0]
        if max(layout.own_width, layout.shared_width) > self.width:
            raise ValueError(f"a block table of {max(layout.own_width, layout.shared_width)} blocks exceeds "
                             f"the context's {self.width}")
        buf = self._static(size)
        self._fill(buf, pad_layout(layout, input_ids, positions, size), (layout.own_width, layout.shared_width),
                   tables, rows, feed)
        entry = self._graphs.get(key)
        if entry is not None:
            entry[0].replay()
            self.replays += 1
            return entry[1][:n]
        meta = self._meta(buf, size, key[1], key[2])
        if self.full:
            return self._forward(buf, meta)[:n]
        return self._capture(key, buf, meta)[:n]

    def _capture(self, key: GraphKey, buf: dict[str, torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
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
        return out

    def _forward(self, buf: dict[str, torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        return self.model(buf["input_ids"], buf["positions"], meta, self.kv_caches)

    def _static(self, size: int) -> dict[str, torch.Tensor]:
        buf = self._buffers.get(size)
        if buf is None:
            dev, w = self.device, self.width
            lens32 = {"own_ctx_lens": size, "shared_ids": size, "shared_lens": size,
                      "decode_group_ptr": size + 1, "decode_group_shared": size}
            flat32 = torch.zeros(sum(lens32.values()), dtype=torch.int32, device=dev)
            flat64 = torch.zeros(3 * size, dtype=torch.int64, device=dev)
            buf = {"flat32": flat32, "flat64": flat64}
            offset = 0
            for name in _STATIC32:
                buf[name] = flat32[offset : offset + lens32[name]]
                offset += lens32[name]
            for k, name in enumerate(_STATIC64):
                buf[name] = flat64[k * size : (k + 1) * size]
            buf["own_block_tables"] = torch.zeros((size, w), dtype=torch.int32, device=dev)
            buf["shared_block_tables"] = torch.zeros((size, w), dtype=torch.int32, device=dev)
            buf["cu_seqlens_q"] = torch.arange(size + 1, dtype=torch.int32, device=dev)
            self._buffers[size] = buf
        return buf

    def _fill(self, buf: dict[str, torch.Tensor], layout: DecodeLayout, widths: tuple[int, int],
              tables: DeviceBlockTables | None, rows: tuple[np.ndarray, np.ndarray],
              feed: Feed | None) -> None:
        """Two packed uploads (pinned, non-blocking: the 1-D fields with the real rows' block-table
        row indices, then ids, positions, slots and the feed's rows), then device-side copies: the
        block-table columns in use, gathered from `tables` (the kernels never read a row past its
        length, so older columns and the padding rows' stale ones may stay), and the fed tokens."""
        host = layout.host
        own_rows, shared_rows = rows
        head = [getattr(host, name) for name in _STATIC32]
        n32 = buf["flat32"].shape[0]
        packed = upload_flat(head + [own_rows, shared_rows], torch.int32, self.device)
        buf["flat32"].copy_(packed[:n32])
        n64 = buf["flat64"].shape[0]
        fed = [] if feed is None else [feed.rows, feed.src]
        packed64 = upload_flat([layout.input_ids, layout.positions, host.slot_mapping] + fed, torch.int64, self.device)
        buf["flat64"].copy_(packed64[:n64])
        if tables is not None:
            own_w, shared_w = widths
            own_dev, shared_dev = packed[n32:].split([own_rows.size, shared_rows.size])
            buf["own_block_tables"][: own_rows.size, :own_w].copy_(tables.gather(own_dev, own_w))
            buf["shared_block_tables"][: shared_rows.size, :shared_w].copy_(tables.gather(shared_dev, shared_w))
        if feed is not None:
            fed_rows, src = packed64[n64:].split([feed.rows.size, feed.src.size])
            buf["input_ids"].index_copy_(0, fed_rows, feed.tokens.index_select(0, src))

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
