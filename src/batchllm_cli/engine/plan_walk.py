"""BatchLLM's admission: the walk of the plan's prefix groups, in plan order.

Per step, with the budget the running work left: the admitted groups in admission order get
their next prefix chunk, then their members' own parts start once the prefix's last chunk is
issued (this step or earlier: a member may start in the step of its prefix's last chunk, since
every layer stores the step's K/V before attention reads it); then new groups in plan order, as
many as the budget, the KV memory bound and the request cap allow.

A group is admitted whole (its prefix and every member's worst-case blocks) when it fits, so
any number of groups can be in flight without deadlock. A group too big ever to fit whole
streams instead: its prefix and first member are admitted, the other members one by one as
memory frees, and no later group is admitted before its last member (at most one group is
partly admitted at a time). The walk stops at the first group that does not fit: plan order
(the decode/prefill ratio order) is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchllm_cli.engine.state import GroupState, RequestState

if TYPE_CHECKING:
    from batchllm_cli.engine.scheduler import Scheduler, StepDraft


class PlanWalk:
    """The Admission of BatchLLM's group scheduling (engine/scheduler.py's protocol)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.groups = scheduler.groups  # plan order
        self._next = 0  # first group not admitted yet
        self._open: list[GroupState] = []  # admitted, prefix left to issue or members to start
        self._streaming: GroupState | None = None  # the one group admitted member by member

    def admit(self, budget: int, draft: StepDraft) -> None:
        for group in self._open:
            if budget == 0:
                break
            budget -= self._advance(group, budget, draft)
        self._open = [g for g in self._open if not g.all_started]
        while budget > 0 and self._streaming is None and self._next < len(self.groups):
            if self.s.at_request_cap:
                return
            group = self.groups[self._next]
            if not self._reserve(group):
                return
            self._next += 1
            budget -= self._advance(group, budget, draft)
            if not group.all_started:
                self._open.append(group)

    def num_reserved(self) -> int:
        return sum(len(g.waiting) for g in self._open)

    def prompt_stored(self, state: RequestState) -> None:
        pass

    def released(self, state: RequestState, blocks: list[int]) -> None:
        pass

    def held_blocks(self) -> list[list[int]]:
        return []

    def _reserve(self, group: GroupState) -> bool:
        """Reserves `group` whole, or (too big ever to fit whole) its prefix and first member."""
        s = self.s
        whole = s.prefix_blocks(group) + sum(s.own_blocks(m, group) for m in group.members)
        if whole <= s.block_limit:
            if not s.fits(whole):
                return False
            group.prefix_blocks = s.pool.allocate(s.prefix_blocks(group))
            while not group.fully_admitted:
                group.waiting.append(self._reserve_member(group))
            return True
        if not s.fits(s.prefix_blocks(group) + s.own_blocks(group.members[0], group)):
            return False
        group.prefix_blocks = s.pool.allocate(s.prefix_blocks(group))
        group.waiting.append(self._reserve_member(group))
        self._streaming = group
        return True

    def _reserve_member(self, group: GroupState) -> RequestState:
        index = group.members[group.next_member]
        state = RequestState(request=self.s.requests[index], group=group)
        state.own_blocks = self.s.pool.allocate(self.s.own_blocks(index, group))
        group.next_member += 1
        return state

    def _advance(self, group: GroupState, budget: int, draft: StepDraft) -> int:
        """The next prefix chunk of `group`, then its members' starts once the prefix is issued
        (as many as `budget` allows); returns the tokens added."""
        used = 0
        if not group.prefix_done:
            used += self.s.add_prefix_chunk(group, budget, draft)
        if not group.prefix_done:
            return used
        while used < budget:
            if not group.waiting:
                if group.fully_admitted or not self.s.fits(self.s.own_blocks(group.members[group.next_member], group)):
                    break
                group.waiting.append(self._reserve_member(group))  # the streaming group's next member
            used += self.s.start(group.waiting.pop(0), budget - used, draft)
        if group is self._streaming and group.all_started:
            self._streaming = None
        return used
