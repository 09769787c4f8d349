"""Per-request and per-group progress of a run, owned and updated by the scheduler only."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from batchllm_cli.types import FinishReason, Request, TokenLogprob

if TYPE_CHECKING:
    from batchllm_cli.engine.sampler import SampleRow


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold `num_tokens` tokens of KV."""
    return -(-num_tokens // block_size)


class Status(Enum):
    WAITING = "waiting"  # blocks reserved, waiting for the group's prefix
    PREFILL = "prefill"  # distinct prompt part being computed, chunk by chunk
    DECODE = "decode"  # one new token per step
    FINISHED = "finished"


@dataclass(eq=False)
class GroupState:
    """A prefix-sharing group: its prefix blocks live until its last member finishes."""

    position: int  # index in the plan's group order
    prefix_len: int  # 0 for a plain request
    members: tuple[int, ...]
    prefix_ids: np.ndarray  # [prefix_len] int32
    prefix_blocks: list[int] = field(default_factory=list)
    prefix_computed: int = 0  # prefix tokens issued into steps (stored once those steps ran)
    next_member: int = 0  # members[next_member] is the next to admit
    members_left: int = 0  # members not finished yet
    waiting: list["RequestState"] = field(default_factory=list)  # admitted, prefix not ready
    prefix_paid: bool = False  # a member's prompt has completed (it counts the prefix as computed)

    @property
    def prefix_done(self) -> bool:
        return self.prefix_computed >= self.prefix_len

    @property
    def fully_admitted(self) -> bool:
        return self.next_member >= len(self.members)

    @property
    def all_started(self) -> bool:
        """Prefix issued and every member's own part started: nothing left for the group walk."""
        return self.prefix_done and self.fully_admitted and not self.waiting


@dataclass(eq=False)
class RequestState:
    """One request from admission to its last token. Its per-step progress (output tokens
    issued but not applied yet, its sample row) lives in the scheduler's columns
    (engine/columns.py), which the decode path reads as arrays."""

    request: Request
    group: GroupState
    own_blocks: list[int] = field(default_factory=list)
    computed: int = 0  # own (distinct) prompt tokens issued into steps
    cached_len: int = 0  # of those, tokens found in a prefix cache (caching policies) at admission
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per output id, if asked for
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    sample_row_cache: SampleRow | None = None  # the engine's SampleRow of this request (engine/engine.py)

    @property
    def index(self) -> int:
        return self.request.index

    @property
    def shared_len(self) -> int:
        return self.group.prefix_len

    @property
    def own_prompt_len(self) -> int:
        """Prompt tokens after the group's shared prefix: computed into this request's blocks."""
        return self.request.prompt_len - self.group.prefix_len

    @property
    def num_output(self) -> int:
        return len(self.output_ids)


def own_worst_case_tokens(request: Request, prefix_len: int) -> int:
    """KV tokens a request may write into its own blocks: distinct prompt + outputs fed back.

    The last output token is sampled but never fed back, so its KV is never stored.
    """
    return request.prompt_len - prefix_len + request.sampling.max_tokens - 1
