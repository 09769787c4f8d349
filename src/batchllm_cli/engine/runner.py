"""The model runner: one StepBatch in, one sampled token per sampling item out.

It builds the step's attention metadata once (FlashInfer's "plan once, run per layer"), runs the
model over all of the step's tokens, computes logits only for the rows that sample, and samples.
It also owns the paged KV cache and decides how many blocks it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from batchllm_cli.engine.config import EngineConfig
from batchllm_cli.engine.sampler import SampleRow, Sampler, report_logprobs
from batchllm_cli.engine.step import StepBatch
from batchllm_cli.errors import CapacityError
from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.kv_cache import allocate_kv_cache, num_blocks_for_bytes
from batchllm_cli.types import Request, TokenLogprob
from batchllm_kernels.metadata import AttentionMetadata

if TYPE_CHECKING:
    from batchllm_cli.engine.cuda_graphs import DecodeGraphs


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
        self.graphs: DecodeGraphs | None = None
        if config.cuda_graphs and self.device.type == "cuda":
            from batchllm_cli.engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(
                model, self.kv_caches, config.block_size, self.model_config.max_position, self.device
            )

    def build_metadata(self, batch: StepBatch) -> AttentionMetadata:
        """The step's attention layout, in the batch's (kernel) item order."""
        items = batch.items
        return AttentionMetadata.build(
            block_size=self.config.block_size,
            q_lens=[it.q_len for it in items],
            own_ctx_lens=[it.own_ctx_len for it in items],
            own_block_tables=[list(it.own_block_table) for it in items],
            shared_ids=[it.shared_id for it in items],
            shared_lens=[s.length for s in batch.shared],
            shared_block_tables=[list(s.block_table) for s in batch.shared],
            device=self.device,
        )

    @torch.inference_mode()
    def execute(
        self, batch: StepBatch, requests: Sequence[Request], outputs: Sequence[Sequence[int]]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Runs one step; returns one token per sampling item, in item order, and for each the
        logprobs its request asked for (None for the others).

        `outputs[k]` is the output ids the k-th sampling item's request already has: their count
        is the output position of the token drawn now (which keys its random stream), and
        presence, frequency and repetition penalties read them.
        """
        sample_items = batch.sample_items
        if self.graphs is not None and self._graphable(batch):
            hidden = self.graphs.run(_decode_layout_args(batch), len(batch.items))  # [num_items, hidden]
            rows_idx = torch.tensor(sample_items, dtype=torch.long, device=self.device)
        else:
            meta = self.build_metadata(batch)
            input_ids = torch.from_numpy(batch.input_ids()).to(self.device)  # [num_tokens]
            positions = torch.from_numpy(batch.positions()).to(self.device)  # [num_tokens]
            hidden = self.model(input_ids, positions, meta, self.kv_caches)  # [num_tokens, hidden]
            ends = meta.cu_seqlens_q[1:].long() - 1  # [num_items]: each item's last token
            rows_idx = ends[torch.tensor(sample_items, dtype=torch.long, device=self.device)]
        if not sample_items:
            return [], []
        logits = self.model.compute_logits(hidden[rows_idx])  # [num_sampling, vocab] float32
        rows = []
        for i, out in zip(sample_items, outputs, strict=True):
            index = batch.items[i].request
            request = requests[index]
            rows.append(SampleRow(request.sampling, index, len(out), request.prompt_ids, out))
        tokens = self.sampler(logits, rows)
        return tokens, report_logprobs(logits, rows, tokens)

    def _graphable(self, batch: StepBatch) -> bool:
        """Decode-only steps (every item one token) of a size some graph holds."""
        assert self.graphs is not None
        return self.graphs.fits(len(batch.items)) and all(it.q_len == 1 for it in batch.items)


def _decode_layout_args(batch: StepBatch) -> dict:
    """cuda_graphs.pad_decode_layout's arguments for a decode-only step."""
    items = batch.items
    return {
        "token_ids": [int(it.token_ids[0]) for it in items],
        "positions": [it.start_pos for it in items],
        "own_ctx_lens": [it.own_ctx_len for it in items],
        "own_block_tables": [it.own_block_table for it in items],
        "shared_ids": [it.shared_id for it in items],
        "shared_lens": [sh.length for sh in batch.shared],
        "shared_block_tables": [sh.block_table for sh in batch.shared],
    }
