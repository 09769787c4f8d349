"""StepBatch: what the scheduler hands the model runner for one iteration (typed, frozen).

A step's decodes (one token per running request, every step) are columns of a DecodeRun, so
that neither the scheduler nor the runner makes a Python object per decode per step; prompt
and prefix chunks are StepItems. `StepBatch.items` shows every item as a StepItem, for readers
that want them one by one (the dry run's counters, the warm-up, tests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np

ItemKind = Literal["prefix", "prefill", "decode"]


@dataclass(slots=True)
class StepItem:
    """A run of consecutive new tokens of one sequence (see batchllm_kernels.metadata).

    Not frozen: a frozen dataclass's __init__ costs several times more per field; nothing
    changes an item after the scheduler made it."""

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
class DecodeRun:
    """A step's decodes as columns, in kernel order (grouped by shared id): row k is one token
    of request `requests[k]`, which samples its next token."""

    requests: np.ndarray  # [n] int64 request indices
    groups: np.ndarray  # [n] int64 plan positions of their groups
    token_ids: np.ndarray  # [n] int32 input token (0 where `feeds` names it)
    start_pos: np.ndarray  # [n] int64 absolute position of the token
    own_ctx_lens: np.ndarray  # [n] int32 own tokens before it (its position in its own blocks)
    shared_ids: np.ndarray  # [n] int32 row of StepBatch.shared, -1: none
    # row among the previous step's sampled tokens of an input token the host has not seen yet
    # (the runner reads it on the device); -1: token_ids holds it
    feeds: np.ndarray  # [n] int64
    tables: tuple[tuple[int, ...], ...]  # own block tables

    def __len__(self) -> int:
        return len(self.tables)

    @classmethod
    def empty(cls) -> "DecodeRun":
        i64, i32 = np.zeros(0, np.int64), np.zeros(0, np.int32)
        return cls(i64, i64, i32, i64, i32, i32, i64, ())

    def unfed(self) -> "DecodeRun":
        """The same decodes, each reading its input token from `token_ids`."""
        return replace(self, feeds=np.full(len(self), -1, dtype=np.int64))

    def as_items(self) -> list[StepItem]:
        cols = zip(self.requests.tolist(), self.groups.tolist(), self.start_pos.tolist(),
                   self.own_ctx_lens.tolist(), self.tables, self.shared_ids.tolist(), self.feeds.tolist())
        return [StepItem("decode", r, g, self.token_ids[k : k + 1], pos, ctx, table, sid, True, feed, 1)
                for k, (r, g, pos, ctx, table, sid, feed) in enumerate(cols)]


@dataclass(frozen=True)
class SharedSegment:
    """A group's completed prefix, attended to by every item that names its row."""

    group: int
    length: int
    block_table: tuple[int, ...]


@dataclass(frozen=True)
class StepBatch:
    """One iteration, in kernel order: the decodes, then the prompt and prefix chunks."""

    step: int
    decodes: DecodeRun
    chunks: tuple[StepItem, ...]
    shared: tuple[SharedSegment, ...]

    def __bool__(self) -> bool:
        """Whether the step runs anything."""
        return bool(len(self.decodes) or self.chunks)

    @cached_property
    def items(self) -> tuple[StepItem, ...]:
        """Every item of the step as a StepItem (decodes first), in kernel order."""
        return tuple(self.decodes.as_items()) + self.chunks

    @cached_property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(item.q_len for item in self.chunks)

    @property
    def num_decode_tokens(self) -> int:
        return len(self.decodes)

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_tokens - self.num_decode_tokens

    @cached_property
    def sampling_chunks(self) -> list[int]:
        """Positions in `chunks` of the chunks that sample (a prompt's last chunk)."""
        return [i for i, item in enumerate(self.chunks) if item.samples]

    @property
    def num_samples(self) -> int:
        """Tokens the step draws: one per decode, then one per sampling chunk (this order)."""
        return len(self.decodes) + len(self.sampling_chunks)

    def sample_requests(self) -> list[int]:
        """The request index of each sampled token, in sampling order."""
        return self.decodes.requests.tolist() + [self.chunks[i].request for i in self.sampling_chunks]
