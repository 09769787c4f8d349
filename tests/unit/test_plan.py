"""build_plan end to end: the paper's microbenchmark saving, JSON, fingerprint and validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from batchllm_cli.engine.config import EngineConfig
from batchllm_cli.errors import PlanError
from batchllm_cli.planner import Plan, PlanSettings, PrefixGroup, build_plan
from batchllm_cli.planner.stats import estimate_peak_kv_blocks
from batchllm_cli.types import Request, SamplingParams

VOCAB = 50_000


def microbench(
    prefix: int, distinct: int, degree: int, num_groups: int, seed: int = 0
) -> list[Request]:
    """The paper's synthetic workload: groups of `degree` prompts on a shared prefix, shuffled.

    Prefixes differ at their first token and so do the distinct parts of a group, so nothing is
    shared beyond the designed prefixes and the saving is exactly the analytic one.
    """
    rng = np.random.default_rng(seed)
    prompts = []
    for first in rng.choice(VOCAB, size=num_groups, replace=False):
        pre = rng.integers(0, VOCAB, prefix, dtype=np.int32)
        pre[0] = first
        for own_first in rng.choice(VOCAB, size=degree, replace=False):
            own = rng.integers(0, VOCAB, distinct, dtype=np.int32)
            own[0] = own_first
            prompts.append(np.concatenate([pre, own]))
    sp = SamplingParams(max_tokens=100)
    return [
        Request(i, f"r{i}", prompts[j], sp) for i, j in enumerate(rng.permutation(len(prompts)))
    ]


@pytest.fixture(scope="module")
def micro() -> list[Request]:
    return microbench(2000, 200, 16, 32)


def test_microbenchmark_saving_and_lru(micro: list[Request]) -> None:
    group_blocks = 2000 // 16 + 16 * -(-(200 + 100) // 16)  # a group's prefix and own blocks
    pool = 3 * group_blocks  # holds about three groups at once
    plan = build_plan(micro, PlanSettings(num_kv_blocks=pool))
    s = plan.stats
    assert s.saving_ratio == pytest.approx(1 - (2000 / 16 + 200) / 2200, abs=1e-6)  # 85.2%
    assert s.logical_prefill_tokens == 512 * 2200
    assert s.processed_prefill_tokens == 32 * 2000 + 512 * 200
    assert s.num_shared_groups == 32 and s.degree_histogram == ((16, 32),)
    assert s.prefix_len.min == s.prefix_len.max == 2000 and s.distinct_len.mean == 200
    assert s.top_groups[0].tokens_saved == 15 * 2000 and len(s.top_groups) == 10
    # in file order an LRU cache of this size keeps few prefixes alive long enough
    assert s.lru_saving_ratio is not None and s.lru_saving_ratio < 0.6
    # with room for everything the LRU cache finds every shared block too
    big = build_plan(micro, PlanSettings(num_kv_blocks=10**6)).stats
    assert big.lru_saving_ratio == pytest.approx(s.saving_ratio, abs=1e-6)
    assert big.saving_ratio == s.saving_ratio


def test_groups_run_together_in_ratio_order(micro: list[Request]) -> None:
    plan = build_plan(micro, PlanSettings())
    assert len(plan.groups) == 32 and all(g.prefix_len == 2000 for g in plan.groups)
    for g in plan.groups:
        first = micro[g.members[0]].prompt_ids[:2000]
        assert all(np.array_equal(micro[m].prompt_ids[:2000], first) for m in g.members)
        assert list(g.members) == sorted(g.members)
    # equal ratios everywhere: ties fall to the smallest input index
    firsts = [g.members[0] for g in plan.groups]
    assert firsts == sorted(firsts)


def test_json_round_trip_is_byte_identical(micro: list[Request]) -> None:
    plan = build_plan(micro, PlanSettings(num_kv_blocks=2000))
    data = plan.to_json()
    again = Plan.from_json(data)
    assert again == plan
    assert again.to_json() == data
    assert build_plan(micro, PlanSettings(num_kv_blocks=2000)).to_json() == data  # deterministic
    again.validate(micro, PlanSettings(num_kv_blocks=123))  # pool size does not shape the plan


def small_job() -> list[Request]:
    rng = np.random.default_rng(3)
    stem = rng.integers(0, 1000, 40, dtype=np.int32)
    prompts = [np.concatenate([stem, rng.integers(0, 1000, 5, dtype=np.int32)]) for _ in range(4)]
    prompts.append(rng.integers(0, 1000, 30, dtype=np.int32))
    return [Request(i, str(i), p, SamplingParams(max_tokens=8)) for i, p in enumerate(prompts)]


def test_changes_to_the_input_change_the_fingerprint() -> None:
    reqs = small_job()
    plan = build_plan(reqs, PlanSettings())
    changed_ids = reqs[4].prompt_ids.copy()
    changed_ids[-1] += 1
    for other in (
        reqs[:4] + [replace(reqs[4], prompt_ids=changed_ids)],
        reqs[:4] + [replace(reqs[4], sampling=SamplingParams(max_tokens=9))],
        reqs[:4],
    ):
        assert build_plan(other, PlanSettings()).fingerprint != plan.fingerprint
        with pytest.raises(PlanError, match="does not belong to this input"):
            plan.validate(other)
    assert build_plan(reqs, PlanSettings(min_prefix_tokens=8)).fingerprint != plan.fingerprint
    with pytest.raises(PlanError, match="other prefix settings"):
        plan.validate(reqs, PlanSettings(prefix_sharing=False))
    plan.validate(reqs)


@pytest.mark.parametrize(
    "groups, message",
    [
        (((0, (0,)), (0, (1,)), (0, (2,)), (0, (3,))), "request 4 is in no plan group"),
        (((40, (0, 1, 2, 3)), (0, (4,)), (0, (4,))), "more than one plan group"),
        (((20, (0, 1, 2, 4)), (0, (3,))), "does not share the group prefix"),
        (((45, (0, 1, 2, 3)), (0, (4,))), "not more than the group prefix"),
        (((40, (0, 1, 2, 3)), (5, (4,))), "one member but a shared prefix"),
        (((40, (0, 1, 2, 3)), (0, (9,))), "names request 9"),
    ],
)
def test_validate_rejects_damaged_plans(groups: tuple, message: str) -> None:
    reqs = small_job()
    plan = build_plan(reqs, PlanSettings())
    assert {(g.prefix_len, g.members) for g in plan.groups} == {(40, (0, 1, 2, 3)), (0, (4,))}
    bad = replace(plan, groups=tuple(PrefixGroup(p, m) for p, m in groups))
    with pytest.raises(PlanError, match=message):
        bad.validate(reqs)


def test_from_json_rejects_other_files() -> None:
    with pytest.raises(PlanError, match="not a batchllm plan"):
        Plan.from_json(b'{"id": 1}')
    with pytest.raises(PlanError, match="not a batchllm plan"):
        Plan.from_json(b"not json")
    data = (
        build_plan(small_job(), PlanSettings()).to_json().replace(b'"version":1', b'"version":99')
    )
    with pytest.raises(PlanError, match="version 99"):
        Plan.from_json(data)


def test_sharing_off_is_input_order() -> None:
    reqs = small_job()
    plan = build_plan(reqs, PlanSettings(prefix_sharing=False))
    assert plan.groups == tuple(PrefixGroup(0, (i,)) for i in range(5))
    assert plan.stats.saving_ratio == 0 and plan.stats.lru_saving_ratio is not None
    assert build_plan([], PlanSettings()).groups == ()


def test_settings_from_engine() -> None:
    cfg = EngineConfig(block_size=32, token_budget=512, min_prefix_tokens=64, prefix_sharing=False)
    s = PlanSettings.from_engine(cfg, num_kv_blocks=777)
    assert (s.block_size, s.token_budget, s.min_prefix_tokens, s.prefix_sharing) == (
        32,
        512,
        64,
        False,
    )
    assert s.num_kv_blocks == 777 and s.memory_bound == cfg.memory_bound


def test_peak_kv_blocks_estimate() -> None:
    lens = np.array([40, 40, 20, 20])
    out = np.array([8, 8, 12, 12])
    groups = [PrefixGroup(32, (0, 1)), PrefixGroup(0, (2,)), PrefixGroup(0, (3,))]
    # prefix 2 blocks, each member (8 + 8) -> 1 block; the plain ones 2 blocks each
    assert estimate_peak_kv_blocks(groups, lens, out, 16, bound_blocks=100) == 2 + 1 + 1 + 2 + 2
    # a bound of 5: member 0 finishes (the prefix stays for member 1), request 2 fits: 2 + 1 + 2
    assert estimate_peak_kv_blocks(groups, lens, out, 16, bound_blocks=5) == 5
    # a bound of 4: the whole group finishes first, then the plain requests run together
    assert estimate_peak_kv_blocks(groups, lens, out, 16, bound_blocks=4) == 4
    # one request larger than the bound still shows: the plan cannot run in that pool
    assert estimate_peak_kv_blocks(groups, lens, out, 16, bound_blocks=1) == 3


def test_random_jobs_give_valid_consistent_plans() -> None:
    rng = np.random.default_rng(99)
    for _ in range(60):
        stems = [rng.integers(0, 6, size=rng.integers(1, 60)) for _ in range(3)]
        reqs = []
        for i in range(int(rng.integers(1, 30))):
            ids = np.concatenate(
                [
                    stems[rng.integers(3)][: rng.integers(0, 60)],
                    rng.integers(0, 6, rng.integers(1, 8)),
                ]
            )
            reqs.append(
                Request(
                    i,
                    str(i),
                    ids.astype(np.int32),
                    SamplingParams(max_tokens=int(rng.integers(1, 40))),
                )
            )
        settings = PlanSettings(
            min_prefix_tokens=int(rng.integers(1, 8)),
            block_size=4,
            num_kv_blocks=int(rng.integers(8, 200)),
        )
        plan = build_plan(reqs, settings)
        plan.validate(reqs, settings)
        s = plan.stats
        lens = [r.prompt_len for r in reqs]
        processed = sum(
            g.prefix_len + sum(lens[m] - g.prefix_len for m in g.members) for g in plan.groups
        )
        assert s.processed_prefill_tokens == processed <= s.logical_prefill_tokens == sum(lens)
        assert s.lru_processed_prefill_tokens is not None and s.lru_processed_prefill_tokens <= sum(
            lens
        )
        assert sum(d * c for d, c in s.degree_histogram) == len(reqs) == s.num_requests
        assert Plan.from_json(plan.to_json()) == plan
