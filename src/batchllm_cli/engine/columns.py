"""Per-request columns of a job (numpy arrays by request index), owned by the scheduler.

What the step loop reads and writes for every running request in every step (how many output
tokens are drawn or being drawn, the last one seen, the row it is sampled in) lives here as
arrays, so that a step's decodes are built and its tokens applied without a Python loop over
the running requests (vLLM keeps its running batch as persistent arrays for the same reason).
The RequestStates stay the record of each request (its output ids, status, blocks); a state
and its columns are updated together, by the scheduler only.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Sequence, TypeVar

import numpy as np

from batchllm_cli.engine.state import GroupState, RequestState
from batchllm_cli.types import Request

T = TypeVar("T")


def pick(items: Sequence[T], indices: list[int]) -> list[T]:
    """[items[i] for i in indices], gathered in C (itemgetter)."""
    if len(indices) < 2:
        return [items[i] for i in indices]
    return list(itemgetter(*indices)(items))


class RequestColumns:
    """The columns of a job's requests; `decoding` lists the decoding ones in round-robin order."""

    def __init__(self, requests: Sequence[Request], groups: Sequence[GroupState]) -> None:
        n = len(requests)
        # fixed for the job
        self.prompt_len = np.fromiter((r.prompt_len for r in requests), dtype=np.int64, count=n)
        self.max_tokens = np.fromiter((r.sampling.max_tokens for r in requests), dtype=np.int64, count=n)
        # only EOS or max_tokens may stop it (SamplingParams.stops_on_eos_only)
        self.eos_only = np.fromiter((r.sampling.stops_on_eos_only for r in requests), dtype=bool, count=n)
        self.group = np.zeros(n, dtype=np.int64)  # plan position of its group
        self.prefix_len = np.zeros(n, dtype=np.int64)  # its group's shared prefix
        for g in groups:
            members = list(g.members)
            self.group[members] = g.position
            self.prefix_len[members] = g.prefix_len
        # progress
        self.issued = np.zeros(n, dtype=np.int64)  # output tokens drawn or being drawn
        self.applied = np.zeros(n, dtype=np.int64)  # output tokens applied (len(output_ids))
        self.last = np.zeros(n, dtype=np.int32)  # the last token applied
        self.sample_row = np.full(n, -1, dtype=np.int64)  # its row in the last step it sampled in
        self.done = np.zeros(n, dtype=bool)
        self.states: list[RequestState | None] = [None] * n  # from its start on
        self.tables: list[tuple[int, ...]] = [()] * n  # its own blocks, fixed from admission on
        self.decoding = np.zeros(0, dtype=np.int64)  # decoding requests, round-robin order

    def start(self, state: RequestState) -> None:
        """A request starts its prompt: its blocks are reserved for good (worst case)."""
        self.states[state.index] = state
        self.tables[state.index] = tuple(state.own_blocks)

    def take_decodes(self, budget: int) -> np.ndarray:
        """The decoding requests that run a decode in the next step, at most `budget`, round
        robin: all of them but those whose last token is being drawn already."""
        decoding = self.decoding
        taken = decoding[:budget]
        if len(decoding) > budget:
            self.decoding = np.concatenate([decoding[budget:], taken])
        return taken[self.issued[taken] < self.max_tokens[taken]]

    def issue(self, sampling: np.ndarray, first: np.ndarray) -> None:
        """A step was issued in which `sampling` draw a token each (in this row order); `first`
        of them draw their first one and decode from the next step on."""
        self.issued[sampling] += 1
        self.sample_row[sampling] = np.arange(len(sampling))
        if len(first):
            self.decoding = np.concatenate([self.decoding, first])

    def apply(self, requests: np.ndarray, tokens: np.ndarray) -> None:
        """Each of `requests` (running) got its token of `tokens`."""
        self.applied[requests] += 1
        self.last[requests] = tokens

    def finish(self, index: int) -> None:
        self.done[index] = True
        self.states[index] = None
        self.tables[index] = ()

    def drop_finished(self) -> None:
        self.decoding = self.decoding[~self.done[self.decoding]]
