"""The model runner: one StepBatch in, one sampled token per sampling item out.

It builds the step's attention layout once on the host (FlashInfer's "plan once, run per layer")
and uploads it in packed, pinned, non-blocking copies; runs the model over all of the step's
tokens (a CUDA graph for decode-only steps), computes logits only for the rows that sample, and
samples on the device. On CUDA nothing here waits for the GPU: the sampled tokens stay on the
device for the next step's decodes and reach the host through a StepOutput.
It also owns the paged KV cache and decides how many blocks it has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from batchllm_cli.engine.block_tables import DeviceBlockTables
from batchllm_cli.engine.config import EngineConfig
from batchllm_cli.engine.sampler import PendingLogprobs, SampleRow, Sampler, pending_logprobs
from batchllm_cli.engine.step import StepBatch
from batchllm_cli.errors import CapacityError
from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.kv_cache import allocate_kv_cache, num_blocks_for_bytes
from batchllm_cli.types import TokenLogprob
from batchllm_kernels.metadata import HostLayout, upload_packed

if TYPE_CHECKING:
    from batchllm_cli.engine.cuda_graphs import DecodeGraphs, GraphKey
    from batchllm_cli.engine.mixed_graphs import MixedGraphs


def kv_pool_blocks(config: EngineConfig, model_config: ModelConfig) -> int:
    """Pool size in blocks: num_kv_blocks if set, else kv_cache_gib (CPU) or a share of the GPU
    memory left free after the weights (CUDA)."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if config.is_cuda:
        free, _ = torch.cuda.mem_get_info(torch.device(config.device))
        budget = int(free * config.kv_cache_fraction)
        where = f"{config.kv_cache_fraction:.0%} of the {free / 2**30:.1f} GiB free on {config.device}"
    else:
        budget = int(config.kv_cache_gib * 2**30)
        where = f"kv_cache_gib = {config.kv_cache_gib}"
    blocks = num_blocks_for_bytes(model_config, budget, config.block_size, config.dtype)
    if blocks < 1:
        raise CapacityError(f"no KV block fits in {where}: give the KV cache more memory")
    return blocks


class ModelRunner:
    """Executes StepBatches on a model with a paged KV cache of `num_blocks` blocks."""

    def __init__(self, model: torch.nn.Module, config: EngineConfig, num_blocks: int) -> None:
        self.model = model
        self.model_config: ModelConfig = model.config
        self.config = config
        self.device = torch.device(config.device)
        self.num_blocks = num_blocks
        self.kv_caches = allocate_kv_cache(
            self.model_config, num_blocks, config.block_size, config.dtype, self.device
        )
        self.sampler = Sampler(job_seed=config.seed, eos_token_ids=self.model_config.eos_token_ids)
        # every live sequence's block table, on the device from its first step on
        self.block_tables = DeviceBlockTables(-(-self.model_config.max_position // config.block_size), self.device)
        self.graphs: DecodeGraphs | None = None
        self.mixed: MixedGraphs | None = None
        # eager-step specializations whose kernels have run (engine/warmup.py)
        self.warm_specializations: set[tuple[int, ...]] = set()
        if config.cuda_graphs and self.device.type == "cuda":
            from batchllm_cli.engine.cuda_graphs import DecodeGraphs
            from batchllm_cli.engine.mixed_graphs import MixedGraphs, StepPieces, buffer_rows

            pool = torch.cuda.graph_pool_handle()  # one pool for every graph of this runner
            self.graphs = DecodeGraphs(
                model, self.kv_caches, config.block_size, self.model_config.max_position, self.device, pool
            )
            rows = buffer_rows(config.mixed_graph_tokens, config.token_budget)
            if rows:
                self.mixed = MixedGraphs(StepPieces(model, self.kv_caches, rows, self.device), rows, self.device, pool)

    @property
    def overlaps(self) -> bool:
        """Whether the engine schedules step N+1 before applying step N's tokens: on CUDA, where
        launch returns before the GPU is done (EngineConfig.overlap overrides, e.g. for tests)."""
        return self.device.type == "cuda" if self.config.overlap is None else self.config.overlap

    def host_layout(self, batch: StepBatch) -> HostLayout:
        """The step's attention layout on the host, in the batch's (kernel) item order, without
        block tables: those are rows of `block_tables` on the device (`table_rows`)."""
        dec, chunks = batch.decodes, batch.chunks
        n = len(dec)
        q = np.ones(n + len(chunks), dtype=np.int64)
        ctx = np.empty(n + len(chunks), dtype=np.int32)
        sid = np.empty(n + len(chunks), dtype=np.int32)
        q[n:] = [it.q_len for it in chunks]
        ctx[:n], ctx[n:] = dec.own_ctx_lens, [it.own_ctx_len for it in chunks]
        sid[:n], sid[n:] = dec.shared_ids, [it.shared_id for it in chunks]
        return HostLayout.build(
            self.config.block_size, q, ctx, dec.tables + tuple(it.own_block_table for it in chunks), sid,
            [s.length for s in batch.shared],
            [s.block_table for s in batch.shared],
            tables=False,
        )

    def table_rows(self, batch: StepBatch) -> tuple[np.ndarray, np.ndarray]:
        """The device block-table rows of the step's items (own blocks) and shared segments,
        written first where a sequence is new. Keys: a request's index; -1 - group position
        for a group's prefix (a prefix chunk's own blocks and the members' shared segment)."""
        dec, chunks = batch.decodes, batch.chunks
        tables = self.block_tables
        own = np.concatenate([tables.rows(dec.requests, dec.tables),
                              tables.rows([it.request if it.request >= 0 else -1 - it.group for it in chunks],
                                          [it.own_block_table for it in chunks])])
        shared = tables.rows([-1 - seg.group for seg in batch.shared], [seg.block_table for seg in batch.shared])
        return own, shared

    def finished(self, request: int, group: int | None, row: SampleRow | None) -> None:
        """A request ended (and with it its group's prefix, when `group` is given): their
        block-table rows, and the penalty counts of its SampleRow, may serve others."""
        self.block_tables.release(request)
        if group is not None:
            self.block_tables.release(-1 - group)
        if row is not None:
            self.sampler.release(row)

    @torch.inference_mode()
    def launch(self, batch: StepBatch, rows: Sequence[SampleRow], prev: StepOutput | None = None) -> StepOutput:
        """Issues one step; its sampled tokens (one per sampling item, in item order) come back
        through the StepOutput, without waiting for the device on CUDA.

        rows[k]: the k-th sampling item's SampleRow (its output position keys its random stream;
        penalties read its tokens so far). prev: the step issued just before, whose device-side
        tokens feed the decodes with `feed` >= 0.
        """
        dec, chunks = batch.decodes, batch.chunks
        layout = self.host_layout(batch)
        # each token's position: a decode's own, a chunk's first and the ones after it
        chunk_q = np.diff(layout.cu_seqlens_q[len(dec) :]).astype(np.int64)
        chunk_starts = np.fromiter((it.start_pos for it in chunks), dtype=np.int64, count=len(chunks))
        chunk_first = layout.cu_seqlens_q[len(dec) : -1].astype(np.int64)
        positions = np.concatenate([dec.start_pos, np.repeat(chunk_starts - chunk_first, chunk_q)
                                    + np.arange(len(dec), int(layout.cu_seqlens_q[-1]), dtype=np.int64)])
        input_ids = np.concatenate([dec.token_ids] + [it.token_ids for it in chunks]).astype(np.int64)
        feed_rows = np.flatnonzero(dec.feeds >= 0)  # only decodes are fed
        feed_src = dec.feeds[feed_rows]
        if feed_rows.size and prev is None:
            raise RuntimeError("a decode is fed from a previous step that was not given: a bug in batchllm")
        # the row of each sampling item's last token: every decode, then the prompts' last chunks
        ends = np.concatenate([np.arange(len(dec), dtype=np.int64),
                               layout.cu_seqlens_q[len(dec) + 1 :][batch.sampling_chunks].astype(np.int64) - 1])
        own_rows, shared_rows = self.table_rows(batch)
        key = self.graph_key(batch, layout)
        if key is not None:
            assert self.graphs is not None
            # imported here, as the graphs are: only CUDA runs graphs
            from batchllm_cli.engine.cuda_graphs import Feed

            feed = Feed(feed_rows, feed_src, prev.tokens) if feed_rows.size else None
            hidden = self.graphs.run(layout, key, input_ids, positions, self.block_tables, (own_rows, shared_rows),
                                     feed)  # [num_items, hidden]
        else:
            meta, (own_dev, shared_dev) = layout.to_device_with(self.device, [own_rows, shared_rows])
            meta = replace(meta, own_block_tables=self.block_tables.gather(own_dev, layout.own_width),
                           shared_block_tables=self.block_tables.gather(shared_dev, layout.shared_width))
            ids, pos, rows_dev, src_dev, ends_dev = upload_packed(
                [input_ids, positions, feed_rows, feed_src, ends], torch.int64, self.device)
            if feed_rows.size:
                ids.index_copy_(0, rows_dev, prev.tokens.index_select(0, src_dev))
            size = self.mixed_size(layout)
            if size is None:
                hidden = self.model(ids, pos, meta, self.kv_caches)
            else:
                assert self.mixed is not None
                hidden = self.mixed.run(size, ids, pos, meta)
            hidden = hidden[ends_dev]  # [num_sampling, hidden]
        if not len(rows):
            return StepOutput.empty(self.device)
        logits = self.model.compute_logits(hidden)  # [num_sampling, vocab] float32
        tokens = self.sampler(logits, rows)
        return StepOutput.of(tokens, pending_logprobs(logits, rows, tokens))

    def graph_key(self, batch: StepBatch, layout: HostLayout) -> GraphKey | None:
        """The CUDA graph that runs this step: decode-only steps (every item one token and
        sampling) of a size some graph holds. None: the step runs eagerly."""
        graphs = self.graphs
        if graphs is None or batch.chunks or not graphs.fits(len(batch.decodes)):
            return None
        return graphs.key_of(layout)

    def mixed_size(self, layout: HostLayout) -> int | None:
        """The padded token count of the piecewise graphs that run a step that no decode graph
        holds (engine/mixed_graphs.py); None: the whole model runs eagerly."""
        return None if self.mixed is None else self.mixed.size_for(int(layout.cu_seqlens_q[-1]))

    def eager_specialization(self, layout: HostLayout) -> tuple[int, ...]:
        """What an eager step of this layout compiles its kernels for (HostLayout.specialization)."""
        mc = self.model_config
        return layout.specialization(mc.num_heads // mc.num_kv_heads, mc.num_kv_heads, self.device)

    def capture(self, keys: Sequence[GraphKey], sizes: Sequence[int]) -> tuple[int, int]:
        """Captures the decode graphs of `keys` (most needed first, while there is room) and the
        piecewise graphs of the token counts `sizes` not captured yet; returns how many of each
        it captured."""
        decode = mixed = 0
        if self.graphs is not None:
            before = self.graphs.captures
            for key in keys:
                self.graphs.capture(key)
            decode = self.graphs.captures - before
        if self.mixed is not None:
            before = self.mixed.captures
            for size in sizes:
                self.mixed.capture(size)
            mixed = self.mixed.captures - before
        return decode, mixed

    @property
    def graph_captures(self) -> int | None:
        """Graphs captured so far (decode keys, and mixed token counts); None without graphs."""
        if self.graphs is None:
            return None
        return self.graphs.captures + (0 if self.mixed is None else self.mixed.captures)


@dataclass
class StepOutput:
    """A launched step's sampled tokens: on the device (to feed the next step) and on their way
    to the host (pinned memory, non-blocking copies and an event on CUDA), with the logprobs
    of the rows that ask for them."""

    tokens: torch.Tensor  # [num_sampling] int64 on the model's device
    _host: torch.Tensor
    _logprobs: PendingLogprobs | None = None  # host side (pinned) once the copies are done
    _ready: Any = None  # torch.cuda.Event recorded after the copies, None on CPU

    @classmethod
    def of(cls, tokens: torch.Tensor, logprobs: PendingLogprobs | None = None) -> "StepOutput":
        if tokens.device.type != "cuda":
            return cls(tokens, tokens, logprobs)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        pending = None if logprobs is None else logprobs.to_host()
        ready = torch.cuda.Event()
        ready.record()
        return cls(tokens, host, pending, ready)

    @classmethod
    def empty(cls, device: torch.device) -> "StepOutput":
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return cls(none, none.cpu())

    def token_ids(self) -> list[int]:
        """The sampled tokens on the host (waits for the step on CUDA)."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()

    @property
    def has_logprobs(self) -> bool:
        """Whether some row of the step asked for logprobs (else `logprobs` is all None)."""
        return self._logprobs is not None

    def logprobs(self) -> list[TokenLogprob | None]:
        """Each sampling row's logprob report (None where not asked); waits as token_ids does."""
        if self._ready is not None:
            self._ready.synchronize()
        return [None] * int(self._host.shape[0]) if self._logprobs is None else self._logprobs.resolve()
