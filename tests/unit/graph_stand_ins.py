"""Stand-ins for the CUDA-only graph runners, for CPU tests of the host logic around them."""

from __future__ import annotations

import torch

from batchllm_cli.engine.mixed_graphs import StepPieces, token_bucket


class EagerMixed:
    """MixedGraphs without capture: the same size choice and static buffers, with the pieces
    run eagerly (what a replay of their graphs computes)."""

    def __init__(self, model: torch.nn.Module, kv_caches: list, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.pieces = StepPieces(model, kv_caches, max_tokens, torch.device("cpu"))
        self.sizes: list[int] = []  # the size of each step run

    def size_for(self, num_tokens: int) -> int | None:
        return token_bucket(num_tokens, self.max_tokens)

    def run(self, size, ids, positions, meta):  # noqa: ANN001, ANN201
        self.sizes.append(size)
        self.pieces.fill(size, ids, positions, meta.slot_mapping)
        return self.pieces.forward(size, meta)
