"""The scheduler: walks a Plan's groups and builds one StepBatch per iteration (pure Python).

Each step takes, under one token budget:
1. the running decodes, one token each (round robin when there are more than the budget);
2. the next chunks of prefills already in flight (group prefixes and requests' own parts);
3. new work in plan order: a group is admitted with its prefix blocks and its first member's
   worst-case blocks; the members start their own parts once the prefix is stored (a later step).

Admission reserves every block a request may ever need (distinct part + max_tokens), so the
pool never runs out mid-run and nothing is ever preempted. The walk stops at the first unit that
does not fit the memory bound, and at the first group whose prefix is still being computed: at
most one group is partly admitted at any time, which is what makes the FIFO walk deadlock-free.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from batchllm_cli.engine.block_pool import BlockPool
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


class Scheduler:
    """Turns a plan into StepBatches; `update` applies a step's sampled tokens."""

    def __init__(
        self,
        requests: Sequence[Request],
        groups: Sequence[PrefixGroup],
        pool: BlockPool,
        *,
        block_size: int,
        token_budget: int,
        memory_bound: float,
    ) -> None:
        self.requests = requests
        self.pool = pool
        self.block_size = block_size
        self.token_budget = token_budget
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
        self._next_group = 0  # first group not admitted yet
        self._open: GroupState | None = None  # the one group with members still to admit
        self._prefilling: list[RequestState | GroupState] = []  # in flight, admission order
        self._decoding: list[RequestState] = []  # round-robin order

    # ---- admission -------------------------------------------------------------------------

    def _own_blocks(self, index: int, group: GroupState) -> int:
        return blocks_for(own_worst_case_tokens(self.requests[index], group.prefix_len), self.block_size)

    def _prefix_blocks(self, group: GroupState) -> int:
        return blocks_for(group.prefix_len, self.block_size)

    def _check_capacity(self) -> None:
        """Raises CapacityError for a request that could not run even with the pool to itself."""
        for g in self.groups:
            for m in g.members:
                need = self._prefix_blocks(g) + self._own_blocks(m, g)
                if need > self.block_limit:
                    r = self.requests[m]
                    raise CapacityError(
                        f"request {r.id!r} needs {need} KV blocks ({r.prompt_len} prompt tokens + "
                        f"{r.sampling.max_tokens} max_tokens, {self.block_size} tokens per block) "
                        f"but at most {self.block_limit} of the pool's {self.pool.num_blocks} "
                        "blocks may be reserved: lower max_tokens, or give the KV cache more "
                        "memory (kv_cache_gib / num_kv_blocks / memory_bound)"
                    )

    def _fits(self, blocks: int) -> bool:
        return self.pool.num_used + blocks <= self.block_limit

    def _admit_member(self, group: GroupState) -> RequestState:
        index = group.members[group.next_member]
        state = RequestState(request=self.requests[index], group=group)
        state.own_blocks = self.pool.allocate(self._own_blocks(index, group))
        group.next_member += 1
        return state

    def _try_admit_group(self) -> GroupState | None:
        group = self.groups[self._next_group]
        need = self._prefix_blocks(group) + self._own_blocks(group.members[0], group)
        if not self._fits(need):
            return None
        group.prefix_blocks = self.pool.allocate(self._prefix_blocks(group))
        group.waiting.append(self._admit_member(group))
        self._next_group += 1
        return group

    # ---- scheduling ------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return self.num_finished < len(self.requests)

    def schedule(self) -> StepBatch:
        """The next step's batch; empty only when no work is left."""
        items: list[StepItem] = []
        shared_rows: dict[int, int] = {}
        shared: list[SharedSegment] = []

        def shared_id(group: GroupState) -> int:
            if group.prefix_len == 0:
                return -1
            row = shared_rows.get(group.position)
            if row is None:
                row = shared_rows[group.position] = len(shared)
                shared.append(SharedSegment(group.position, group.prefix_len, tuple(group.prefix_blocks)))
            return row

        # 1. decodes, round robin when they exceed the budget
        taken = self._decoding[: self.token_budget]
        self._decoding = self._decoding[self.token_budget :] + taken
        for s in taken:
            own_pos = s.own_prompt_len + s.num_output - 1
            items.append(
                StepItem(
                    kind="decode",
                    request=s.index,
                    group=s.group.position,
                    token_ids=_one_token(s.output_ids[-1]),
                    start_pos=s.shared_len + own_pos,
                    own_ctx_len=own_pos,
                    own_block_table=tuple(s.own_blocks),
                    shared_id=shared_id(s.group),
                    samples=True,
                )
            )
        budget = self.token_budget - len(taken)

        # 2. prefills in flight, 3. new work
        for unit in self._prefilling:
            if budget == 0:
                break
            budget -= self._add_chunk(unit, budget, items, shared_id)
        self._admit_new(budget, items, shared_id)
        return self._finish_batch(items, shared)

    def _admit_new(self, budget: int, items: list[StepItem], shared_id: Callable[[GroupState], int]) -> None:
        """Starts new work in plan order with what is left of the step's token budget."""
        while budget > 0:
            group = self._open
            if group is None:
                if self._next_group >= len(self.groups):
                    return
                group = self._try_admit_group()
                if group is None:
                    return
                self._open = group
                if group.prefix_len > 0:
                    self._prefilling.append(group)
                    budget -= self._add_chunk(group, budget, items, shared_id)
            if not group.prefix_done:
                return  # its members start once the prefix is stored
            while budget > 0 and (group.waiting or not group.fully_admitted):
                if not group.waiting:
                    if not self._fits(self._own_blocks(group.members[group.next_member], group)):
                        return
                    group.waiting.append(self._admit_member(group))
                state = group.waiting.pop(0)
                state.status = Status.PREFILL
                self._prefilling.append(state)
                budget -= self._add_chunk(state, budget, items, shared_id)
            if group.waiting or not group.fully_admitted:
                return
            self._open = None

    def _add_chunk(
        self,
        unit: RequestState | GroupState,
        budget: int,
        items: list[StepItem],
        shared_id: Callable[[GroupState], int],
    ) -> int:
        """Appends the next prefill chunk of `unit` (at most `budget` tokens); returns its length."""
        if isinstance(unit, GroupState):
            start = unit.prefix_computed
            n = min(unit.prefix_len - start, budget)
            items.append(
                StepItem(
                    kind="prefix",
                    request=-1,
                    group=unit.position,
                    token_ids=unit.prefix_ids[start : start + n],
                    start_pos=start,
                    own_ctx_len=start,
                    own_block_table=tuple(unit.prefix_blocks),
                    shared_id=-1,
                    samples=False,
                )
            )
            return n
        start = unit.computed
        n = min(unit.own_prompt_len - start, budget)
        base = unit.shared_len
        items.append(
            StepItem(
                kind="prefill",
                request=unit.index,
                group=unit.group.position,
                token_ids=unit.request.prompt_ids[base + start : base + start + n],
                start_pos=base + start,
                own_ctx_len=start,
                own_block_table=tuple(unit.own_blocks),
                shared_id=shared_id(unit.group),
                samples=start + n == unit.own_prompt_len,
            )
        )
        return n

    def _finish_batch(self, items: list[StepItem], shared: list[SharedSegment]) -> StepBatch:
        # Kernel order: single-token items first, grouped by shared id (stable), then the rest.
        singles = sorted((it for it in items if it.q_len == 1), key=lambda it: it.shared_id)
        rest = [it for it in items if it.q_len != 1]
        batch = StepBatch(step=self.step_count, items=tuple(singles + rest), shared=tuple(shared))
        self.step_count += 1
        return batch

    # ---- after the step ran ----------------------------------------------------------------

    def update(
        self, batch: StepBatch, sampled_ids: Sequence[int], stop: StopFn | None = None
    ) -> list[RequestState]:
        """Applies a step: advances prefills, appends `sampled_ids` (one per sampling item, in
        item order), finishes requests; returns the requests that finished in this step."""
        states = self.active_states()
        finished: list[RequestState] = []
        sampled = iter(sampled_ids)
        for item in batch.items:
            if item.kind == "prefix":
                self.groups[item.group].prefix_computed += item.q_len
                continue
            state = states[item.request]
            if item.kind == "prefill":
                state.computed += item.q_len
            if not item.samples:
                continue
            state.output_ids.append(int(next(sampled)))
            if state.status is Status.PREFILL:
                state.status = Status.DECODE
                self._decoding.append(state)
                self._prompt_stored(state)
            reason = stop(state) if stop is not None else None
            if reason is None and state.num_output >= state.request.sampling.max_tokens:
                reason = "length"
            if reason is not None:
                self._finish(state, reason)
                finished.append(state)
        self._prefilling = [
            u
            for u in self._prefilling
            if (u.prefix_computed < u.prefix_len if isinstance(u, GroupState) else u.status is Status.PREFILL)
        ]
        if finished:
            self._decoding = [s for s in self._decoding if s.status is Status.DECODE]
        return finished

    def _prompt_stored(self, state: RequestState) -> None:
        """Called once a request's whole prompt is in the KV cache (a hook for subclasses)."""

    def active_states(self) -> dict[int, RequestState]:
        """Requests that are prefilling or decoding, by request index."""
        states = {u.index: u for u in self._prefilling if isinstance(u, RequestState)}
        states.update((s.index, s) for s in self._decoding)
        return states

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        state.status = Status.FINISHED
        state.finish_reason = reason
        self.pool.free(state.own_blocks)
        state.own_blocks = []
        group = state.group
        group.members_left -= 1
        if group.members_left == 0:
            self.pool.free(group.prefix_blocks)
            group.prefix_blocks = []
        self.num_finished += 1

    def live_block_lists(self) -> list[list[int]]:
        """Every block list that holds a reference (for BlockPool.check_integrity in tests)."""
        lists = [g.prefix_blocks for g in self.groups if g.prefix_blocks]
        seen: set[int] = set()
        for s in [u for u in self._prefilling if isinstance(u, RequestState)] + self._decoding:
            if s.index not in seen:
                seen.add(s.index)
                lists.append(s.own_blocks)
        for g in self.groups:
            lists.extend(s.own_blocks for s in g.waiting)
        return lists


def _one_token(token: int) -> np.ndarray:
    return np.array([token], dtype=np.int32)
