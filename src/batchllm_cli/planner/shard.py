"""Sharding a plan for data parallelism: prefix groups to workers, balanced by estimated cost.

One place for the decision, used by `--device a,b` (engine/parallel.py) and `--ray`
(distributed/). A group's cost is the prefill it computes after sharing (its prefix once, each
member's own part) plus the tokens it may generate (max_tokens: the planner's expectation of
decode work, as its group order uses). Groups go biggest first to the least loaded shard (ties:
the lower shard). A group stays whole unless it does not fit: when it would push the least
loaded shard past `1 + slack` times the mean shard cost, the members that fill that shard to the
mean (or, if fewer than two would, to the cap) stay there and the rest go on to the next least
loaded shard, each piece computing the prefix again. Most jobs split
nothing; a job whose biggest group outweighs a shard (one instruction shared by the whole file)
splits few groups, and it pays their prefix once more per piece (`Sharding.extra_tokens`).
Each shard keeps the plan's group order (Plan.restrict). Deterministic.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from batchllm_cli.planner.plan import Plan

if TYPE_CHECKING:
    from batchllm_cli.types import Request

# How far past the mean shard cost a shard may go before a group is split: the 10% balance
# the issue asks of the paper's workloads on 8 and 64 workers. Tighter splits more groups (each
# split computes a prefix again); looser leaves shards further apart.
SPLIT_SLACK = 0.10
MIN_PIECE = 2  # members a piece of a split group needs: one alone would share nothing


@dataclass(frozen=True)
class ShardCut:
    """One shard: its requests (re-indexed 0..m-1), their plan cut, and where they came from."""

    requests: list[Request]
    plan: Plan
    job_index: np.ndarray  # [m] int64: the job index of each of the shard's requests
    cost: int  # estimated tokens of work


@dataclass(frozen=True)
class Sharding:
    """A job's shards (none empty) and what splitting groups cost."""

    shards: list[ShardCut]
    split_groups: int  # groups whose members went to more than one shard
    extra_tokens: int  # prefix tokens computed again because of those splits


def member_cost(request: Request, prefix_len: int) -> int:
    """Tokens a member costs beyond its group's prefix: its own part and its max_tokens."""
    return request.prompt_len - prefix_len + request.sampling.max_tokens


def group_cost(requests: Sequence[Request], prefix_len: int, members: Sequence[int]) -> int:
    """Tokens a group costs: its prefix once, each member's own part and its max_tokens."""
    return prefix_len + sum(member_cost(requests[m], prefix_len) for m in members)


def shard_plan(requests: Sequence[Request], plan: Plan, num_shards: int, slack: float = SPLIT_SLACK) -> Sharding:
    """`plan`'s groups shared out over `num_shards` shards (see the module docstring)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    costs = [group_cost(requests, g.prefix_len, g.members) for g in plan.groups]
    mean = sum(costs) / num_shards
    cap = mean * (1 + slack)
    owner = np.zeros(len(requests), dtype=np.int64)  # the shard of each request
    heap = [(0, k) for k in range(num_shards)]  # (load, shard): the least loaded on top
    split_groups = extra = 0
    for gi in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        g = plan.groups[gi]
        members, left = list(g.members), costs[gi]
        pieces = 0
        while members:
            load, k = heapq.heappop(heap)
            take = len(members)
            if load + left > cap:  # split: fill this shard to the mean if a piece fits, else to the cap
                take = _fitting(requests, g.prefix_len, members, mean - load - g.prefix_len)
                if take < MIN_PIECE:
                    take = _fitting(requests, g.prefix_len, members, cap - load - g.prefix_len)
                if take < MIN_PIECE:  # a smaller piece would share nothing: the group stays whole
                    take = len(members)
            piece, members = members[:take], members[take:]
            owner[piece] = k
            cost = group_cost(requests, g.prefix_len if len(piece) > 1 else 0, piece)
            left -= cost - g.prefix_len  # what stays: the prefix and the other members
            heapq.heappush(heap, (load + cost, k))
            pieces += 1
        if pieces > 1:
            split_groups += 1
            extra += (pieces - 1) * g.prefix_len
    shards = [_cut(requests, plan, owner == k) for k in range(num_shards)]
    return Sharding([s for s in shards if s.requests], split_groups, extra)


def chunk_shard(shard: ShardCut, max_requests: int) -> list[ShardCut]:
    """`shard` in runs of whole groups (plan order) of at most `max_requests` requests each (a
    bigger group is a chunk of its own): units to stream back and retry, sharing kept."""
    chunks: list[list[int]] = [[]]
    for g in shard.plan.groups:
        if chunks[-1] and len(chunks[-1]) + len(g.members) > max_requests:
            chunks.append([])
        chunks[-1].extend(g.members)
    out = []
    for members in chunks:
        keep = np.zeros(len(shard.requests), dtype=bool)
        keep[members] = True
        cut = _cut(shard.requests, shard.plan, keep)
        out.append(ShardCut(cut.requests, cut.plan, shard.job_index[cut.job_index], cut.cost))
    return [c for c in out if c.requests]


def chunk_size(num_requests: int, max_requests: int, min_chunks: int) -> int:
    """Requests per chunk of a shard of `num_requests`: at most `max_requests`, and small enough
    that the shard makes at least `min_chunks` chunks."""
    return max(1, min(max_requests, math.ceil(num_requests / min_chunks)))


def _fitting(requests: Sequence[Request], prefix_len: int, members: list[int], room: float) -> int:
    """How many leading members fit in `room` tokens besides the prefix."""
    used = 0
    for n, m in enumerate(members):
        used += member_cost(requests[m], prefix_len)
        if used > room:
            return n
    return len(members)


def _cut(requests: Sequence[Request], plan: Plan, keep: np.ndarray) -> ShardCut:
    sub_requests, sub_plan = plan.restrict(requests, keep)
    cost = sum(group_cost(sub_requests, g.prefix_len, g.members) for g in sub_plan.groups)
    return ShardCut(sub_requests, sub_plan, np.flatnonzero(keep).astype(np.int64), cost)
