"""Piecewise CUDA graphs for the steps that decode-only graphs do not hold (prefill chunks, mixed
steps): every op but attention, captured per padded token count.

Attention is the one op whose launch depends on the step's layout (how many items, how long
each, which share a prefix), and a graph cannot take a launch grid as data. Everything between
two attentions depends only on the number of tokens: layer i's output projection, norm and MLP,
then layer i+1's norm, QKV projection, rotary embedding and KV store. So a step of n tokens,
padded to a bucket of T, runs L + 1 graphs of T tokens (`StepPieces.piece`: embedding to
layer 0's KV store; layer i's output to layer i+1's KV store; the last layer's output to the
final norm) with L eager attention calls on the n real tokens between them. A step costs about
L + 1 replays and L attention launches instead of a dozen launches per layer.

The pieces read and write static buffers of `max_tokens` rows (token ids, positions, slots,
queries, residual stream, attention output, final hidden states); a graph of T tokens uses
their first T rows. The T - n padding rows hold slot -1 (the KV store skips them) and
whatever the buffers held before; their rows are never read by attention or by the caller.
Graphs share the decode graphs' memory pool (one stream, never two graphs at once).

`StepPieces` is plain torch code and runs on any device (the CPU tests compare it with the
model's own forward); `MixedGraphs` captures and replays it on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch

from batchllm_kernels.metadata import AttentionMetadata

# Padded token counts. Spaced by at most 2x below 128 and 1.5x above, so padding costs at most
# half a step's dense work where a step is host-bound anyway.
TOKEN_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def token_bucket(num_tokens: int, max_tokens: int) -> int | None:
    """The smallest bucket of at most `max_tokens` that holds `num_tokens`; None when none does."""
    for size in TOKEN_BUCKETS:
        if size > max_tokens:
            return None
        if size >= num_tokens:
            return size
    return None


def buffer_rows(max_tokens: int, token_budget: int) -> int:
    """Rows of the static buffers: the bucket of the largest step (the token budget) where it is
    at most `max_tokens`, else the largest bucket that is; 0 when graphs hold no step."""
    size = token_bucket(min(max_tokens, token_budget), max_tokens)
    if size is not None:
        return size
    return max((b for b in TOKEN_BUCKETS if b <= max_tokens), default=0)


class StepPieces:
    """A Llama model's forward cut at its attentions, over static buffers of `max_tokens` rows."""

    def __init__(self, model: torch.nn.Module, kv_caches: list, max_tokens: int, device: torch.device) -> None:
        self.model = model
        self.kv_caches = kv_caches
        cfg = model.config
        self.config = cfg
        self.num_layers = cfg.num_layers
        dtype = model.embed_tokens.weight.dtype
        self.ids = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.slots = torch.full((max_tokens,), -1, dtype=torch.int64, device=device)
        self.q = torch.zeros((max_tokens, cfg.num_heads, cfg.head_dim), dtype=dtype, device=device)
        self.attn_out = torch.zeros((max_tokens, cfg.num_heads, cfg.head_dim), dtype=dtype, device=device)
        self.residual = torch.zeros((max_tokens, cfg.hidden_size), dtype=dtype, device=device)
        self.hidden = torch.zeros((max_tokens, cfg.hidden_size), dtype=dtype, device=device)

    @property
    def num_pieces(self) -> int:
        return self.num_layers + 1

    def fill(self, size: int, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
        """The step's n real tokens into rows 0..n-1; rows n..size-1 become padding (slot -1)."""
        n = ids.shape[0]
        self.ids[:n].copy_(ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(slots)
        if n < size:
            self.slots[n:size].fill_(-1)

    def piece(self, j: int, size: int) -> None:
        """Piece j over the first `size` rows: the ops from attention j - 1 (or the embedding) to
        attention j (or the final norm)."""
        model, layers = self.model, self.model.layers
        if j == 0:
            hidden, residual = model.embed_tokens(self.ids[:size]), None
        else:
            hidden, residual = layers[j - 1].attention_output(self.attn_out[:size], self.residual[:size])
        if j == self.num_layers:
            out, _ = model.final_norm(hidden, residual)
            self.hidden[:size].copy_(out)
            return
        q, residual = layers[j].attention_input(self.positions[:size], hidden, residual, self.kv_caches[j],
                                                self.slots[:size], model.cos_sin_cache)
        self.q[:size].copy_(q)
        self.residual[:size].copy_(residual)

    def attend(self, j: int, n: int, meta: AttentionMetadata) -> None:
        """Layer j's attention over the n real tokens (eager: its launch follows the layout)."""
        self.attn_out[:n].copy_(self.model.layers[j].attend(self.q[:n], self.kv_caches[j], meta))

    def forward(self, size: int, meta: AttentionMetadata, run_piece: Any = None) -> torch.Tensor:
        """hidden [n, hidden] of the step filled in (n = meta's token count); `run_piece(j)` runs
        piece j (a graph replay), by default eagerly."""
        n = int(meta.slot_mapping.shape[0])
        for j in range(self.num_pieces):
            if run_piece is None:
                self.piece(j, size)
            else:
                run_piece(j)
            if j < self.num_layers:
                self.attend(j, n, meta)
        return self.hidden[:n]


class MixedGraphs:
    """Captured pieces (StepPieces) per token bucket; `run` replays a step's, capturing first
    when its bucket is new."""

    def __init__(self, pieces: StepPieces, max_tokens: int, device: torch.device, pool: Any) -> None:
        self.pieces = pieces
        self.max_tokens = max_tokens
        self.device = device
        self.pool = pool
        self._graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.captures = 0  # buckets captured
        self.replays = 0  # steps replayed

    def size_for(self, num_tokens: int) -> int | None:
        return token_bucket(num_tokens, self.max_tokens)

    def has(self, size: int) -> bool:
        return size in self._graphs

    def capture(self, size: int) -> None:
        """Captures the pieces of `size` tokens (all padding: nothing is stored, nothing read
        past the static buffers); each piece runs once eagerly first, which compiles its kernels."""
        if size in self._graphs:
            return
        pieces = self.pieces
        pieces.slots[:size].fill_(-1)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for j in range(pieces.num_pieces):
                pieces.piece(j, size)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graphs = []
        for j in range(pieces.num_pieces):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                pieces.piece(j, size)
            graphs.append(graph)
        self._graphs[size] = graphs
        self.captures += 1

    def run(self, size: int, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """hidden [n, hidden] of a step of n tokens (ids, positions and meta on the device)."""
        self.capture(size)
        graphs = self._graphs[size]
        self.pieces.fill(size, ids, positions, meta.slot_mapping)
        self.replays += 1
        return self.pieces.forward(size, meta, run_piece=lambda j: graphs[j].replay())
