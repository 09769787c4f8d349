"""StepBatch: what the scheduler hands the model runner for one iteration (typed, frozen)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ItemKind = Literal["prefix", "prefill", "decode"]


@dataclass(frozen=True)
class StepItem:
    """A run of consecutive new tokens of one sequence (see batchllm_kernels.metadata)."""

    kind: ItemKind  # "prefix": a chunk of a group's shared prefix; "prefill": a request's own part
    request: int  # request index; -1 for a prefix chunk
    group: int  # plan position of the request's group
    token_ids: np.ndarray  # [q_len] int32
    start_pos: int  # absolute position of the first token in the prompt (shared prefix included)
    own_ctx_len: int  # tokens already in own_block_table before this item's tokens
    own_block_table: tuple[int, ...]
    shared_id: int  # row of StepBatch.shared, -1 when the item attends to no shared prefix
    samples: bool  # the logits of its last token give the request's next token
    # a decode whose input token the previous step sampled and the host has not seen yet: its row
    # among that step's sampled tokens (the runner reads it on the device); -1: token_ids holds it
    feed: int = -1

    @property
    def q_len(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True)
class SharedSegment:
    """A group's completed prefix, attended to by every item that names its row."""

    group: int
    length: int
    block_table: tuple[int, ...]


@dataclass(frozen=True)
class StepBatch:
    """One iteration: items in kernel order (single-token items first, grouped by shared id)."""

    step: int
    items: tuple[StepItem, ...]
    shared: tuple[SharedSegment, ...]

    @property
    def num_tokens(self) -> int:
        return sum(item.q_len for item in self.items)

    @property
    def num_decode_tokens(self) -> int:
        return sum(1 for item in self.items if item.kind == "decode")

    @property
    def num_prefill_tokens(self) -> int:
        return sum(item.q_len for item in self.items if item.kind != "decode")

    @property
    def sample_items(self) -> list[int]:
        """Positions in `items` of the items that sample, in item order."""
        return [i for i, item in enumerate(self.items) if item.samples]

    def input_ids(self) -> np.ndarray:
        """[num_tokens] int64: all items' tokens, concatenated in item order."""
        if not self.items:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([item.token_ids for item in self.items]).astype(np.int64)

    def positions(self) -> np.ndarray:
        """[num_tokens] int64: the absolute position of each token."""
        if not self.items:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(
            [np.arange(it.start_pos, it.start_pos + it.q_len, dtype=np.int64) for it in self.items]
        )
