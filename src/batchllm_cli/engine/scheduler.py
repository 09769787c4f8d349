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
on CUDA): a request's `pending` counts tokens being drawn, and a decode whose input token is
still on the device names its row among the previous step's tokens (`StepItem.feed`).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.plan_walk import PlanWalk
from batchllm_cli.engine.state import (
    GroupState,
    RequestState,
    Status,
    blocks_for,
    own_worst_case_tokens,
)
from batchllm_cli.engine.step import SharedSegment, StepBatch, StepItem
from batchllm_cli.errors import CapacityError
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import FinishReason, Request

# Called for each request that just got a token: a finish reason to stop it, None to go on.
StopFn = Callable[[RequestState], "FinishReason | None"]


def _shared_id_of(item: StepItem) -> int:
    return item.shared_id


class StepDraft:
    """The items of the step being built, and the shared segments they name."""

    def __init__(self) -> None:
        self.items: list[StepItem] = []
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
        self._prefilling: list[RequestState] = []  # own parts in flight, start order
        self._decoding: list[RequestState] = []  # round-robin order
        self._running: dict[int, RequestState] = {}  # started and not finished, by request index
        self._sampling: dict[int, list[RequestState]] = {}  # issued steps not applied: who samples
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
        budget = self.token_budget - len(draft.items)  # one token per decode
        for state in self._prefilling:
            if budget == 0:
                break
            budget -= self._add_chunk(state, budget, draft)
        self._prefilling = [s for s in self._prefilling if s.computed < s.own_prompt_len]
        if budget > 0:
            self.admission.admit(budget, draft)
        return self._finish_batch(draft)

    def _add_decodes(self, draft: StepDraft) -> None:
        """The running decodes, round robin when they exceed the budget; a decode whose last
        token is still on the device (sampled by the step before) is fed from there."""
        decoding, budget = self._decoding, self.token_budget
        taken = decoding[:budget]
        if len(decoding) > budget:
            self._decoding = decoding[budget:] + taken
        # the per-request loop below runs every step for every decode: kept to plain attribute reads
        tokens = np.fromiter((s.output_ids[-1] if s.pending == 0 else 0 for s in taken), dtype=np.int32,
                             count=len(taken))
        append, shared_id = draft.items.append, draft.shared_id
        for k, s in enumerate(taken):
            request, group, pending = s.request, s.group, s.pending
            issued = len(s.output_ids) + pending  # output tokens drawn or being drawn
            if issued >= request.sampling.max_tokens:
                continue  # its last token is in flight
            prefix_len = group.prefix_len
            own_pos = request.prompt_len - prefix_len + issued - 1
            # positional: StepItem(kind, request, group, token_ids, start_pos, own_ctx_len,
            # own_block_table, shared_id, samples, feed, q_len) (a decode per running request)
            append(StepItem("decode", request.index, group.position, tokens[k : k + 1], prefix_len + own_pos,
                            own_pos, s.block_table, shared_id(group), True, s.sample_row if pending else -1, 1))

    def start(self, state: RequestState, budget: int, draft: StepDraft) -> int:
        """Starts an admitted request's own prompt part with its first chunk; returns its length."""
        state.status = Status.PREFILL
        self._running[state.index] = state
        n = self._add_chunk(state, budget, draft)
        if state.computed < state.own_prompt_len:
            self._prefilling.append(state)
        return n

    def add_prefix_chunk(self, group: GroupState, budget: int, draft: StepDraft) -> int:
        """Issues the next chunk of a group's shared prefix (at most `budget` tokens)."""
        start = group.prefix_computed
        n = min(group.prefix_len - start, budget)
        draft.items.append(
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
        draft.items.append(
            StepItem(
                kind="prefill",
                request=state.index,
                group=state.group.position,
                token_ids=state.request.prompt_ids[base + start : base + start + n],
                start_pos=base + start,
                own_ctx_len=start,
                own_block_table=state.block_table,
                shared_id=draft.shared_id(state.group),
                samples=start + n == state.own_prompt_len,
            )
        )
        state.computed += n
        return n

    def _finish_batch(self, draft: StepDraft) -> StepBatch:
        # Kernel order: single-token items first, grouped by shared id (stable), then the rest.
        items = draft.items
        singles = sorted((it for it in items if it.q_len == 1), key=_shared_id_of)
        rest = [it for it in items if it.q_len != 1]
        batch = StepBatch(step=self.step_count, items=tuple(singles + rest), shared=tuple(draft.shared))
        if not items:
            return batch  # an empty batch runs nothing: it keeps the next step's number
        running, sampling = self._running, []
        for row, i in enumerate(batch.sample_items):
            state = running[batch.items[i].request]
            sampling.append(state)
            state.pending += 1
            state.sample_row = row
            if state.status is Status.PREFILL and state.pending == 1 and not state.output_ids:
                self._decoding.append(state)  # decodes from the next step on
        self._sampling[batch.step] = sampling
        self.step_count += 1
        return batch

    def sampling_states(self, batch: StepBatch) -> list[RequestState]:
        """The requests that sample in an issued, not yet applied step, in sampling order."""
        return self._sampling[batch.step]

    # ---- after the step ran ----------------------------------------------------------------

    def update(
        self, batch: StepBatch, sampled_ids: Sequence[int], stop: StopFn | None = None
    ) -> list[RequestState]:
        """Applies a step: appends `sampled_ids` (one per sampling item, in item order) and
        finishes requests; returns the requests that finished in this step."""
        if not batch.items:
            return []
        finished: list[RequestState] = []
        for state, token in zip(self._sampling.pop(batch.step), sampled_ids, strict=True):
            if state.status is Status.FINISHED:
                continue  # finished already (a step issued before its last token was seen)
            output = state.output_ids
            output.append(int(token))
            state.pending -= 1
            if state.status is Status.PREFILL:
                state.status = Status.DECODE
                self.admission.prompt_stored(state)
            reason = stop(state) if stop is not None else None
            if reason is None and len(output) >= state.request.sampling.max_tokens:
                reason = "length"
            if reason is not None:
                self._finish(state, reason)
                finished.append(state)
        if finished:
            self._decoding = [s for s in self._decoding if s.status is not Status.FINISHED]
        return finished

    def active_states(self) -> dict[int, RequestState]:
        """Requests that are prefilling or decoding, by request index."""
        return self._running

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        state.status = Status.FINISHED
        state.finish_reason = reason
        del self._running[state.index]
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
