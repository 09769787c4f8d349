"""StepBatch: what the scheduler hands the model runner for one iteration (typed, frozen)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

ItemKind = Literal["prefix", "prefill", "decode"]


@dataclass(slots=True)
class StepItem:
    """A run of consecutive new tokens of one sequence (see batchllm_kernels.metadata).

    Not frozen: a step builds one per running request, and a frozen dataclass's __init__ costs
    several times more per field; nothing changes an item after the scheduler made it."""

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

    q_len: int = -1  # len(token_ids); filled in when not given

    def __post_init__(self) -> None:
        if self.q_len < 0:
            self.q_len = int(self.token_ids.shape[0])


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

    @cached_property
    def num_tokens(self) -> int:
        return sum(item.q_len for item in self.items)

    @cached_property
    def num_decode_tokens(self) -> int:
        return sum(1 for item in self.items if item.kind == "decode")

    @cached_property
    def num_prefill_tokens(self) -> int:
        return self.num_tokens - self.num_decode_tokens

    @cached_property
    def sample_items(self) -> list[int]:
        """Positions in `items` of the items that sample, in item order."""
        return [i for i, item in enumerate(self.items) if item.samples]
