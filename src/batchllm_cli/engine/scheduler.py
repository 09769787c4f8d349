"""The scheduler: builds one StepBatch per iteration from running work and an Admission policy
(pure Python).

Each step takes, under one token budget (the paper's memory-centric token batching):
1. the running decodes, one token each (round robin when there are more than the budget);
2. the next chunks of the requests' own prompt parts already in flight;
3. what the admission policy adds with the budget left: BatchLLM's walk of the plan's groups
   (engine/plan_walk.py), or a peer's file-order admission over an LRU prefix cache
   (engine/caching.py).

Admission reserves every block a request may ever need (distinct part + max_tokens), so the pool
never runs out mid-run and nothing is ever preempted.

Work is "issued" when it goes into a step: prefill progress advances at schedule time, since
steps run in order on the device and anything issued is stored before a later step reads it.
Sampled tokens come back through `update`, possibly a step late (the engine runs one step ahead
on CUDA): a request's output tokens drawn or being drawn are counted apart from those applied
(engine/columns.py), and a decode whose input token is still on the device names its row among
the previous step's tokens (`DecodeRun.feeds`).

The decodes, one per running request every step, are built and applied as numpy columns
(engine/columns.py, step.DecodeRun): no Python loop per request builds a step, and `update`
runs Python per request only to append its token, and for the few that start decoding or
may stop (EOS, max_tokens, a stop rule beyond EOS).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.columns import RequestColumns, pick
from batchllm_cli.engine.plan_walk import PlanWalk
from batchllm_cli.engine.state import (
    GroupState,
    RequestState,
    Status,
    blocks_for,
    own_worst_case_tokens,
)
from batchllm_cli.engine.step import DecodeRun, SharedSegment, StepBatch, StepItem
from batchllm_cli.errors import CapacityError
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import FinishReason, Request


class StopRule(Protocol):
    """Decides, after each new token of a request, whether it stops (engine/stop.py)."""

    # A request whose SamplingParams.stops_on_eos_only stops only on one of these tokens (or
    # at max_tokens, which the scheduler checks): the rule is asked about it only then.
    eos_token_ids: frozenset[int]

    def __call__(self, state: RequestState) -> FinishReason | None:
        """A finish reason to stop `state` (its last output id is new), None to go on."""


class StepDraft:
    """The step being built: its decodes (columns, and their requests in the same order), its
    chunks, and the shared segments they name."""

    def __init__(self) -> None:
        self.decodes = DecodeRun.empty()
        self.decoding: list[RequestState] = []  # the requests of `decodes`, row by row
        self.chunks: list[StepItem] = []  # prompt and prefix chunks
        self.shared: list[SharedSegment] = []
        self._rows: dict[int, int] = {}

    def shared_id(self, group: GroupState) -> int:
        """The step's row of `group`'s prefix segment (-1 for a group without a prefix)."""
        if group.prefix_len == 0:
            return -1
        row = self._rows.get(group.position)
        if row is None:
            row = self._rows[group.position] = len(self.shared)
            self.shared.append(SharedSegment(group.position, group.prefix_len, tuple(group.prefix_blocks)))
        return row


class Admission(Protocol):
    """How new work enters a step. The scheduler calls `admit` after the running work is in."""

    def admit(self, budget: int, draft: StepDraft) -> None:
        """Starts work (Scheduler.start / add_prefix_chunk) with at most `budget` tokens."""

    def num_reserved(self) -> int:
        """Requests holding blocks that have not started yet."""

    def prompt_stored(self, state: RequestState) -> None:
        """A request's whole prompt is in the KV cache (its first token was applied)."""

    def released(self, state: RequestState, blocks: list[int]) -> None:
        """A request finished; `blocks` were its own blocks (already freed once)."""

    def held_blocks(self) -> list[list[int]]:
        """Block lists the policy holds references to (for BlockPool.check_integrity)."""


AdmissionFactory = Callable[["Scheduler"], Admission]


class Scheduler:
    """Turns running work and admissions into StepBatches; `update` applies sampled tokens."""

    def __init__(
        self,
        requests: Sequence[Request],
        groups: Sequence[PrefixGroup],
        pool: BlockPool,
        *,
        block_size: int,
        token_budget: int,
        memory_bound: float,
        max_running: int | None = None,
        admission: AdmissionFactory | None = None,
    ) -> None:
        """groups: every request in exactly one group (plain requests: groups of one, prefix 0).
        admission: builds the policy from the scheduler; default BatchLLM's PlanWalk."""
        self.requests = requests
        self.pool = pool
        self.block_size = block_size
        self.token_budget = token_budget
        # admission stops while this many requests are admitted and unfinished (None: memory only)
        self.max_running = max_running
        # blocks that admitted work may hold at once
        self.block_limit = max(1, int(memory_bound * pool.num_blocks))
        self.groups = [
            GroupState(
                position=pos,
                prefix_len=g.prefix_len,
                members=tuple(g.members),
                prefix_ids=requests[g.members[0]].prompt_ids[: g.prefix_len],
                members_left=len(g.members),
            )
            for pos, g in enumerate(groups)
        ]
        self._check_capacity()
        self.step_count = 0
        self.num_finished = 0
        self.num_output_tokens = 0  # output tokens applied so far
        self.prompts_done: list[RequestState] = []  # requests whose first token the last update applied
        self.columns = RequestColumns(requests, self.groups)  # per-request progress, as arrays
        self._prefilling: list[RequestState] = []  # own parts in flight, start order
        self._running: dict[int, RequestState] = {}  # started and not finished, by request index
        # issued steps not applied yet: the requests that sample in each (indices, states)
        self._sampling: dict[int, tuple[np.ndarray, list[RequestState]]] = {}
        self.admission: Admission = (admission or PlanWalk)(self)

    # ---- blocks ----------------------------------------------------------------------------

    def own_blocks(self, index: int, group: GroupState) -> int:
        """Blocks request `index` may write into its own blocks (worst case)."""
        return blocks_for(own_worst_case_tokens(self.requests[index], group.prefix_len), self.block_size)

    def prefix_blocks(self, group: GroupState) -> int:
        return blocks_for(group.prefix_len, self.block_size)

    def fits(self, blocks: int) -> bool:
        """Whether `blocks` more may be reserved under the memory bound."""
        return self.pool.num_used + blocks <= self.block_limit

    def _check_capacity(self) -> None:
        """Raises CapacityError for a request that could not run even with the pool to itself."""
        for g in self.groups:
            for m in g.members:
                need = self.prefix_blocks(g) + self.own_blocks(m, g)
                if need > self.block_limit:
                    r = self.requests[m]
                    raise CapacityError(
                        f"request {r.id!r} needs {need} KV blocks ({r.prompt_len} prompt tokens + "
                        f"{r.sampling.max_tokens} max_tokens, {self.block_size} tokens per block) "
                        f"but at most {self.block_limit} of the pool's {self.pool.num_blocks} "
                        "blocks may be reserved: lower max_tokens, or give the KV cache more "
                        "memory (kv_cache_gib / num_kv_blocks / memory_bound)"
                    )

    # ---- scheduling ------------------------------------------------------------------------

    @property
    def num_admitted(self) -> int:
        """Requests holding blocks: started and unfinished, or reserved and waiting to start."""
        return len(self._running) + self.admission.num_reserved()

    @property
    def at_request_cap(self) -> bool:
        return self.max_running is not None and self.num_admitted >= self.max_running

    @property
    def has_work(self) -> bool:
        return self.num_finished < len(self.requests)

    def schedule(self) -> StepBatch:
        """The next step's batch; empty only when no work can be issued until tokens come back."""
        draft = StepDraft()
        self._add_decodes(draft)
        budget = self.token_budget - len(draft.decodes)  # one token per decode
        for state in self._prefilling:
            if budget == 0:
                break
            budget -= self._add_chunk(state, budget, draft)
        self._prefilling = [s for s in self._prefilling if s.computed < s.own_prompt_len]
        if budget > 0:
            self.admission.admit(budget, draft)
        return self._finish_batch(draft)

    def _add_decodes(self, draft: StepDraft) -> None:
        """The running decodes, round robin when they exceed the budget, as the draft's
        DecodeRun in kernel order (grouped by shared id); a decode whose last token is still on
        the device (sampled by the step before) is fed from there. Built from the columns, with
        no Python loop over the requests: this runs every step for every running request."""
        c = self.columns
        taken = c.take_decodes(self.token_budget)
        n = len(taken)
        if not n:
            return
        prefix = c.prefix_len[taken]
        shared = np.full(n, -1, dtype=np.int32)
        with_prefix = np.flatnonzero(prefix > 0)
        if with_prefix.size:
            uniq, first, inverse = np.unique(c.group[taken[with_prefix]], return_index=True, return_inverse=True)
            rows = np.empty(len(uniq), dtype=np.int32)
            for j in np.argsort(first).tolist():  # the step's rows, in order of first appearance
                rows[j] = draft.shared_id(self.groups[int(uniq[j])])
            shared[with_prefix] = rows[inverse.reshape(-1)]
            order = np.argsort(shared, kind="stable")
            taken, prefix, shared = taken[order], prefix[order], shared[order]
        issued = c.issued[taken]
        pending = issued - c.applied[taken]  # > 0: its input token is being drawn by the step before
        own_pos = c.prompt_len[taken] - prefix + issued - 1  # own position of the input token
        indices = taken.tolist()
        draft.decodes = DecodeRun(
            requests=taken,
            groups=c.group[taken],
            token_ids=np.where(pending == 0, c.last[taken], 0).astype(np.int32),
            start_pos=prefix + own_pos,
            own_ctx_lens=own_pos.astype(np.int32),
            shared_ids=shared,
            feeds=np.where(pending > 0, c.sample_row[taken], -1),
            tables=tuple(pick(c.tables, indices)),
        )
        draft.decoding = pick(c.states, indices)  # type: ignore[arg-type]

    def start(self, state: RequestState, budget: int, draft: StepDraft) -> int:
        """Starts an admitted request's own prompt part with its first chunk; returns its length."""
        state.status = Status.PREFILL
        self._running[state.index] = state
        self.columns.start(state)
        n = self._add_chunk(state, budget, draft)
        if state.computed < state.own_prompt_len:
            self._prefilling.append(state)
        return n

    def add_prefix_chunk(self, group: GroupState, budget: int, draft: StepDraft) -> int:
        """Issues the next chunk of a group's shared prefix (at most `budget` tokens)."""
        start = group.prefix_computed
        n = min(group.prefix_len - start, budget)
        draft.chunks.append(
            StepItem(
                kind="prefix",
                request=-1,
                group=group.position,
                token_ids=group.prefix_ids[start : start + n],
                start_pos=start,
                own_ctx_len=start,
                own_block_table=tuple(group.prefix_blocks),
                shared_id=-1,
                samples=False,
            )
        )
        group.prefix_computed += n
        return n

    def _add_chunk(self, state: RequestState, budget: int, draft: StepDraft) -> int:
        """Issues the next chunk of a request's own prompt part (at most `budget` tokens)."""
        start = state.computed
        n = min(state.own_prompt_len - start, budget)
        base = state.shared_len
        draft.chunks.append(
            StepItem(
                kind="prefill",
                request=state.index,
                group=state.group.position,
                token_ids=state.request.prompt_ids[base + start : base + start + n],
                start_pos=base + start,
                own_ctx_len=start,
                own_block_table=self.columns.tables[state.index],
                shared_id=draft.shared_id(state.group),
                samples=start + n == state.own_prompt_len,
            )
        )
        state.computed += n
        return n

    def _finish_batch(self, draft: StepDraft) -> StepBatch:
        batch = StepBatch(step=self.step_count, decodes=draft.decodes, chunks=tuple(draft.chunks),
                          shared=tuple(draft.shared))
        if not batch:
            return batch  # an empty batch runs nothing: it keeps the next step's number
        # a sampling chunk is a prompt's last: its request draws its first token, then decodes
        first = [self._running[batch.chunks[i].request] for i in batch.sampling_chunks]
        first_ids = np.fromiter((s.index for s in first), dtype=np.int64, count=len(first))
        sampling = np.concatenate([batch.decodes.requests, first_ids])
        self.columns.issue(sampling, first_ids)
        self._sampling[batch.step] = (sampling, draft.decoding + first)
        self.step_count += 1
        return batch

    def sampling_states(self, batch: StepBatch) -> list[RequestState]:
        """The requests that sample in an issued step not applied yet, in sampling order."""
        return self._sampling[batch.step][1]

    def output_positions(self, batch: StepBatch) -> np.ndarray:
        """The output position of each token the step draws, in sampling order (0: a request's
        first token); read right after `schedule`, before later steps are issued."""
        return self.columns.issued[self._sampling[batch.step][0]] - 1

    # ---- after the step ran ----------------------------------------------------------------

    def update(self, batch: StepBatch, sampled_ids: Sequence[int], stop: StopRule | None = None) -> list[RequestState]:
        """Applies a step: appends `sampled_ids` (one per sampling item, in sampling order) and
        finishes requests; returns the requests that finished in this step. `prompts_done`
        lists the requests that got their first token."""
        self.prompts_done = []
        if not batch:
            return []
        requests, states = self._sampling.pop(batch.step)
        tokens = np.asarray(sampled_ids, dtype=np.int64).reshape(-1)
        if tokens.shape[0] != requests.shape[0]:
            raise ValueError(f"step {batch.step} samples {requests.shape[0]} tokens, {tokens.shape[0]} given")
        c = self.columns
        live = ~c.done[requests]  # a request finished since this step was issued gets nothing
        if not live.all():
            keep = np.flatnonzero(live)
            requests, tokens, states = requests[keep], tokens[keep], pick(states, keep.tolist())
        c.apply(requests, tokens)
        for state, token in zip(states, tokens.tolist()):
            state.output_ids.append(token)
        self.num_output_tokens += len(states)
        applied = c.applied[requests]
        first = applied == 1
        length = applied >= c.max_tokens[requests]
        if stop is None:
            check = np.zeros(len(states), dtype=bool)
        else:  # a request that stops on EOS only is looked at when it drew one
            check = ~c.eos_only[requests] | np.isin(tokens, np.fromiter(stop.eos_token_ids, dtype=np.int64))
        finished: list[RequestState] = []
        events = np.flatnonzero(first | check | length).tolist()
        first_l, check_l, length_l = (first[events].tolist(), check[events].tolist(), length[events].tolist())
        for i, is_first, checks, at_length in zip(events, first_l, check_l, length_l):
            state = states[i]
            if is_first:
                state.status = Status.DECODE
                self.admission.prompt_stored(state)
                self.prompts_done.append(state)
            reason = stop(state) if checks else None  # type: ignore[misc]
            if reason is None and at_length:
                reason = "length"
            if reason is not None:
                self._finish(state, reason)
                finished.append(state)
        if finished:
            c.drop_finished()
        return finished

    def active_states(self) -> dict[int, RequestState]:
        """Requests that are prefilling or decoding, by request index."""
        return self._running

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        state.status = Status.FINISHED
        state.finish_reason = reason
        del self._running[state.index]
        self.columns.finish(state.index)
        blocks, state.own_blocks = state.own_blocks, []
        self.pool.free(blocks)
        group = state.group
        group.members_left -= 1
        if group.members_left == 0:
            self.pool.free(group.prefix_blocks)
            group.prefix_blocks = []
        self.num_finished += 1
        self.admission.released(state, blocks)

    def live_block_lists(self) -> list[list[int]]:
        """Every block list that holds a reference (for BlockPool.check_integrity in tests)."""
        lists = [g.prefix_blocks for g in self.groups if g.prefix_blocks]
        lists.extend(s.own_blocks for s in self._running.values())
        for g in self.groups:
            lists.extend(s.own_blocks for s in g.waiting)
        return lists + self.admission.held_blocks()
