"""The scheduler: walks a Plan's groups and builds one StepBatch per iteration (pure Python).

Each step takes, under one token budget (the paper's memory-centric token batching):
1. the running decodes, one token each (round robin when there are more than the budget);
2. the next chunks of the requests' own prompt parts already in flight;
3. the admitted groups, in admission order: the next chunk of the shared prefix, then, once the
   prefix's last chunk is issued (this step or earlier), their members' own parts: a member may
   start in the same step as its prefix's last chunk, because every layer stores the step's K/V
   before attention reads it;
4. new groups in plan order, as many as the budget and the KV memory bound allow.

Admission reserves every block a request may ever need (distinct part + max_tokens), so the pool
never runs out mid-run and nothing is ever preempted. A group is admitted whole (its prefix and
every member's blocks) when it fits, so any number of groups can be in flight without deadlock.
A group too big to ever fit whole streams instead: its prefix and first member are admitted, the
other members one by one as memory frees, and no later group is admitted before its last member
(the safe path: at most one group is partly admitted at a time). The walk stops at the first
group that does not fit: plan order (the decode/prefill ratio order) is kept.

Work is "issued" when it goes into a step: prefill progress advances at schedule time, since
steps run in order on the device and anything issued is stored before a later step reads it.
Sampled tokens come back through `update`.
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
        max_running: int | None = None,
    ) -> None:
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
        self._next_group = 0  # first group not admitted yet
        self._open: list[GroupState] = []  # admitted, prefix left to issue or members to start
        self._streaming: GroupState | None = None  # the one group admitted member by member
        self._prefilling: list[RequestState] = []  # own parts in flight, start order
        self._decoding: list[RequestState] = []  # round-robin order
        self._running: dict[int, RequestState] = {}  # started and not finished, by request index

    # ---- admission -------------------------------------------------------------------------

    def _own_blocks(self, index: int, group: GroupState) -> int:
        return blocks_for(own_worst_case_tokens(self.requests[index], group.prefix_len), self.block_size)

    def _prefix_blocks(self, group: GroupState) -> int:
        return blocks_for(group.prefix_len, self.block_size)

    def _whole_blocks(self, group: GroupState) -> int:
        """Blocks of a group admitted whole: its prefix and every member's worst case."""
        return self._prefix_blocks(group) + sum(self._own_blocks(m, group) for m in group.members)

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

    def _try_admit_group(self, group: GroupState) -> bool:
        """Reserves `group` whole, or (too big ever to fit whole) its prefix and first member."""
        whole = self._whole_blocks(group)
        if whole <= self.block_limit:
            if not self._fits(whole):
                return False
            group.prefix_blocks = self.pool.allocate(self._prefix_blocks(group))
            while not group.fully_admitted:
                group.waiting.append(self._admit_member(group))
            return True
        if not self._fits(self._prefix_blocks(group) + self._own_blocks(group.members[0], group)):
            return False
        group.prefix_blocks = self.pool.allocate(self._prefix_blocks(group))
        group.waiting.append(self._admit_member(group))
        self._streaming = group
        return True

    # ---- scheduling ------------------------------------------------------------------------

    @property
    def num_admitted(self) -> int:
        """Requests holding blocks: started and unfinished, or reserved and waiting to start."""
        return len(self._running) + sum(len(g.waiting) for g in self._open)

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

        # 1. decodes, round robin when they exceed the budget; a decode whose last token is still
        # on the device (sampled by the step before, not yet applied) is fed from there
        taken = self._decoding[: self.token_budget]
        self._decoding = self._decoding[self.token_budget :] + taken
        tokens = np.fromiter((s.output_ids[-1] if s.pending == 0 else 0 for s in taken), dtype=np.int32,
                             count=len(taken))
        for k, s in enumerate(taken):
            issued = len(s.output_ids) + s.pending  # output tokens drawn or being drawn
            if issued >= s.request.sampling.max_tokens:
                continue  # its last token is in flight
            own_pos = s.request.prompt_len - s.group.prefix_len + issued - 1
            items.append(
                StepItem(
                    kind="decode",
                    request=s.request.index,
                    group=s.group.position,
                    token_ids=tokens[k : k + 1],
                    start_pos=s.group.prefix_len + own_pos,
                    own_ctx_len=own_pos,
                    own_block_table=s.block_table,
                    shared_id=shared_id(s.group),
                    samples=True,
                    feed=s.sample_row if s.pending else -1,
                    q_len=1,
                )
            )
        budget = self.token_budget - len(items)  # one token per decode

        # 2. own parts in flight, 3. admitted groups, 4. new groups
        for state in self._prefilling:
            if budget == 0:
                break
            budget -= self._add_chunk(state, budget, items, shared_id)
        self._prefilling = [s for s in self._prefilling if s.computed < s.own_prompt_len]
        for group in self._open:
            if budget == 0:
                break
            budget -= self._advance_group(group, budget, items, shared_id)
        self._open = [g for g in self._open if not g.all_started]
        self._admit_new(budget, items, shared_id)
        return self._finish_batch(items, shared)

    def _admit_new(self, budget: int, items: list[StepItem], shared_id: Callable[[GroupState], int]) -> None:
        """Admits new groups in plan order with what is left of the step's token budget."""
        while budget > 0 and self._streaming is None and self._next_group < len(self.groups):
            if self.max_running is not None and self.num_admitted >= self.max_running:
                return
            group = self.groups[self._next_group]
            if not self._try_admit_group(group):
                return
            self._next_group += 1
            budget -= self._advance_group(group, budget, items, shared_id)
            if not group.all_started:
                self._open.append(group)

    def _advance_group(
        self, group: GroupState, budget: int, items: list[StepItem], shared_id: Callable[[GroupState], int]
    ) -> int:
        """The next prefix chunk of `group`, then its members' starts once the prefix is issued
        (as many as `budget` allows); returns the tokens added."""
        used = 0
        if not group.prefix_done:
            used += self._add_prefix_chunk(group, budget, items)
        if not group.prefix_done:
            return used
        while used < budget:
            if not group.waiting:
                if group.fully_admitted or not self._fits(self._own_blocks(group.members[group.next_member], group)):
                    break
                group.waiting.append(self._admit_member(group))  # the streaming group's next member
            used += self._start(group.waiting.pop(0), budget - used, items, shared_id)
        if group is self._streaming and group.all_started:
            self._streaming = None
        return used

    def _start(
        self, state: RequestState, budget: int, items: list[StepItem], shared_id: Callable[[GroupState], int]
    ) -> int:
        """Starts an admitted request's own prompt part with its first chunk; returns its length."""
        state.status = Status.PREFILL
        self._running[state.index] = state
        n = self._add_chunk(state, budget, items, shared_id)
        if state.computed < state.own_prompt_len:
            self._prefilling.append(state)
        return n

    def _add_prefix_chunk(self, group: GroupState, budget: int, items: list[StepItem]) -> int:
        """Issues the next chunk of a group's shared prefix (at most `budget` tokens)."""
        start = group.prefix_computed
        n = min(group.prefix_len - start, budget)
        items.append(
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

    def _add_chunk(
        self, state: RequestState, budget: int, items: list[StepItem], shared_id: Callable[[GroupState], int]
    ) -> int:
        """Issues the next chunk of a request's own prompt part (at most `budget` tokens)."""
        start = state.computed
        n = min(state.own_prompt_len - start, budget)
        base = state.shared_len
        items.append(
            StepItem(
                kind="prefill",
                request=state.index,
                group=state.group.position,
                token_ids=state.request.prompt_ids[base + start : base + start + n],
                start_pos=base + start,
                own_ctx_len=start,
                own_block_table=state.block_table,
                shared_id=shared_id(state.group),
                samples=start + n == state.own_prompt_len,
            )
        )
        state.computed += n
        return n

    def _finish_batch(self, items: list[StepItem], shared: list[SharedSegment]) -> StepBatch:
        # Kernel order: single-token items first, grouped by shared id (stable), then the rest.
        singles = sorted((it for it in items if it.q_len == 1), key=lambda it: it.shared_id)
        rest = [it for it in items if it.q_len != 1]
        batch = StepBatch(step=self.step_count, items=tuple(singles + rest), shared=tuple(shared))
        for row, i in enumerate(batch.sample_items):
            state = self._running[batch.items[i].request]
            state.pending += 1
            state.sample_row = row
            if state.status is Status.PREFILL and state.pending == 1 and state.num_output == 0:
                self._decoding.append(state)  # decodes from the next step on
        self.step_count += 1
        return batch

    # ---- after the step ran ----------------------------------------------------------------

    def update(
        self, batch: StepBatch, sampled_ids: Sequence[int], stop: StopFn | None = None
    ) -> list[RequestState]:
        """Applies a step: appends `sampled_ids` (one per sampling item, in item order) and
        finishes requests; returns the requests that finished in this step."""
        finished: list[RequestState] = []
        sampled = iter(sampled_ids)
        for item in batch.items:
            if not item.samples:
                continue
            token = int(next(sampled))
            state = self._running.get(item.request)
            if state is None:
                continue  # finished already (a step issued before its last token was seen)
            state.output_ids.append(token)
            state.pending -= 1
            if state.status is Status.PREFILL:
                state.status = Status.DECODE
                self._prompt_stored(state)
            reason = stop(state) if stop is not None else None
            if reason is None and state.num_output >= state.request.sampling.max_tokens:
                reason = "length"
            if reason is not None:
                self._finish(state, reason)
                finished.append(state)
        if finished:
            self._decoding = [s for s in self._decoding if s.status is not Status.FINISHED]
        return finished

    def _prompt_stored(self, state: RequestState) -> None:
        """Called once a request's whole prompt is in the KV cache (a hook for subclasses)."""

    def active_states(self) -> dict[int, RequestState]:
        """Requests that are prefilling or decoding, by request index."""
        return self._running

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        state.status = Status.FINISHED
        state.finish_reason = reason
        del self._running[state.index]
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
        lists.extend(s.own_blocks for s in self._running.values())
        for g in self.groups:
            lists.extend(s.own_blocks for s in g.waiting)
        return lists
