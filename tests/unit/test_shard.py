"""Sharding a plan (planner/shard.py): whole prefix groups to shards balanced by estimated cost,
a group split only when it cannot fit, chunks of whole groups; the paper's workloads balance."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.bench.workloads import generate, load_spec
from batchllm_cli.planner import PlanSettings, build_plan
from batchllm_cli.planner.shard import chunk_shard, chunk_size, group_cost, shard_plan
from batchllm_cli.types import Request, SamplingParams


def _requests(groups: list[tuple[int, int, int]], max_tokens: int = 8, seed: int = 0) -> list[Request]:
    """(prefix length, members, own length) per group; the file is not in group order."""
    rng = np.random.default_rng(seed)
    out = []
    for g, (plen, members, own) in enumerate(groups):
        prefix = rng.integers(100, 1000, plen)
        prefix[:1] = 2000 + g  # groups share no first token
        for k in range(members):
            mine = rng.integers(100, 1000, own)
            mine[0] = 3000 + k  # members part at their first own token
            out.append(np.concatenate([prefix, mine]).astype(np.int32))
    order = rng.permutation(len(out))
    return [Request(i, f"r{i}", out[j], SamplingParams(max_tokens=max_tokens)) for i, j in enumerate(order)]


def _owners(plan, sharding) -> list[set[int]]:  # type: ignore[no-untyped-def]
    shard_of = {int(j): k for k, s in enumerate(sharding.shards) for j in s.job_index}
    return [{shard_of[m] for m in g.members} for g in plan.groups]


def test_whole_groups_every_request_once_and_plans_cut() -> None:
    requests = _requests([(400, 6, 20), (300, 4, 30), (200, 3, 10), (100, 5, 5), (64, 2, 8), (0, 3, 50)])
    plan = build_plan(requests, PlanSettings())
    sharding = shard_plan(requests, plan, 3)
    seen = np.concatenate([s.job_index for s in sharding.shards])
    assert sorted(seen.tolist()) == list(range(len(requests)))
    assert all(len(owners) == 1 for owners in _owners(plan, sharding))  # no group split
    assert sharding.split_groups == 0 and sharding.extra_tokens == 0
    for s in sharding.shards:
        s.plan.validate(s.requests)
        assert [r.id for r in s.requests] == [requests[int(j)].id for j in s.job_index]
        assert s.cost == sum(group_cost(s.requests, g.prefix_len, g.members) for g in s.plan.groups)
    again = shard_plan(requests, plan, 3)
    assert [s.job_index.tolist() for s in again.shards] == [s.job_index.tolist() for s in sharding.shards]


def test_a_group_bigger_than_a_shard_is_split_and_pays_its_prefix_again() -> None:
    # one group of 40 members outweighs the rest: two shards can only balance by splitting it
    requests = _requests([(64, 40, 20), (100, 3, 10), (50, 2, 10)])
    plan = build_plan(requests, PlanSettings())
    big = max(range(len(plan.groups)), key=lambda i: len(plan.groups[i].members))
    whole = [s.cost for s in shard_plan(requests, plan, 2, slack=10.0).shards]  # never splits
    sharding = shard_plan(requests, plan, 2)
    costs = [s.cost for s in sharding.shards]
    assert max(costs) <= 1.1 * np.mean(costs) < max(whole)
    assert sharding.split_groups == 1 and len(_owners(plan, sharding)[big]) == 2
    assert sharding.extra_tokens == plan.groups[big].prefix_len
    assert sum(costs) == sum(whole) + sharding.extra_tokens
    for s in sharding.shards:  # each piece keeps sharing its prefix
        assert max(len(g.members) for g in s.plan.groups) > 1


def test_more_shards_than_groups_leaves_the_rest_empty_and_small_pieces_are_not_made() -> None:
    requests = _requests([(300, 4, 10)])
    plan = build_plan(requests, PlanSettings())
    sharding = shard_plan(requests, plan, 8)  # a piece of fewer than two members shares nothing
    assert len(sharding.shards) <= 2
    assert all(len(s.requests) >= 2 for s in sharding.shards)
    with pytest.raises(ValueError):
        shard_plan(requests, plan, 0)


def test_chunks_are_runs_of_whole_groups_mapped_to_job_indices() -> None:
    requests = _requests([(100, 5, 5), (80, 3, 5), (60, 4, 5), (0, 2, 30)])
    plan = build_plan(requests, PlanSettings())
    shard = shard_plan(requests, plan, 1).shards[0]
    chunks = chunk_shard(shard, max_requests=6)
    assert sorted(np.concatenate([c.job_index for c in chunks]).tolist()) == list(range(len(requests)))
    chunk_of = {int(j): k for k, c in enumerate(chunks) for j in c.job_index}
    for g in plan.groups:
        assert len({chunk_of[m] for m in g.members}) == 1
    for c in chunks:
        c.plan.validate(c.requests)
        assert [r.id for r in c.requests] == [requests[int(j)].id for j in c.job_index]
        assert len(c.requests) <= 6 or len(c.plan.groups) == 1
    assert chunk_size(10_000, 2048, 4) == 2048 and chunk_size(50, 2048, 4) == 13 and chunk_size(0, 8, 4) == 1


@pytest.mark.parametrize("name", ["industry", "shared-2000-200-d16", "shared-1000-1000-d16",
                                  "shared-2000-1000-d4", "long-prefix-16000-d16", "no-sharing"])
def test_the_papers_workloads_balance_within_ten_percent_on_8_and_64_workers(name: str) -> None:
    spec = load_spec(name)
    workload = generate(spec)
    params = SamplingParams(max_tokens=spec.output_len)
    requests = [Request(i, str(i), p, params) for i, p in enumerate(workload.prompts)]
    plan = build_plan(requests, PlanSettings())
    total = sum(group_cost(requests, g.prefix_len, g.members) for g in plan.groups)
    for workers in (8, 64):
        sharding = shard_plan(requests, plan, workers)
        costs = [s.cost for s in sharding.shards]
        assert len(costs) == workers
        assert max(costs) <= 1.10 * np.mean(costs), (workers, max(costs) / np.mean(costs))
        assert sum(costs) == total + sharding.extra_tokens
        assert sharding.extra_tokens <= 0.07 * total  # few splits, one prefix each (long-prefix at 64: 6.2%)
        assert sum(len(s.requests) for s in sharding.shards) == len(requests)
