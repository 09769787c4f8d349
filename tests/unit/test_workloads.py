"""Benchmark workloads: specs, deterministic generation, the intended prefix tree, savings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from batchllm_cli.bench.workloads import (
    IntRange,
    WorkloadSpec,
    analytic_saving,
    generate,
    load_spec,
    parse_spec,
    workload_names,
)
from batchllm_cli.errors import ConfigError
from batchllm_cli.planner import PlanSettings, build_plan
from batchllm_cli.types import Request, SamplingParams


def _spec(**kw) -> WorkloadSpec:
    base = dict(
        name="t", description="", paper="", num_groups=6, degree=IntRange(3, 3),
        prefix_len=IntRange(40, 40), distinct_len=IntRange(5, 5), output_len=4,
        vocab=(100, 5000),
    )  # fmt: skip
    base.update(kw)
    return WorkloadSpec(**base)


def _planner_processed(workload, min_prefix=16) -> tuple[int, int]:
    sp = SamplingParams(max_tokens=workload.spec.output_len, ignore_eos=True)
    reqs = [Request(i, str(i), p, sp) for i, p in enumerate(workload.prompts)]
    plan = build_plan(reqs, PlanSettings(min_prefix_tokens=min_prefix), compare_lru=False)
    return plan.stats.processed_prefill_tokens, plan.stats.num_shared_groups


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.nonzero(a[:m] != b[:m])[0]
    return int(diff[0]) if diff.size else m


def test_packaged_specs_match_their_names():
    names = workload_names()
    assert {"shared-2000-200-d16", "shared-2000-1000-d4", "shared-1000-1000-d16",
            "long-prefix-16000-d16", "industry", "no-sharing", "peers-1b"} <= set(names)  # fmt: skip
    for name in names:
        spec = load_spec(name)
        assert spec.paper and spec.description and spec.output_len == 100
    s = load_spec("shared-2000-1000-d4")
    assert (s.prefix_len, s.distinct_len, s.degree) == (IntRange(2000, 2000), IntRange(1000, 1000), IntRange(4, 4))
    assert s.expected_requests == 6400
    p = load_spec("peers-1b")
    assert (p.num_groups, p.degree.lo, p.prefix_len.lo, p.distinct_len.lo) == (16, 16, 2000, 200)
    n = load_spec("no-sharing")
    assert n.degree.hi == 1 and n.prefix_len.hi + n.distinct_len.hi == 2200
    ind = load_spec("industry")
    assert ind.instruction_len > 0 and ind.degree.mean == 3 and ind.distinct_len.mean == 30
    assert ind.instruction_len + ind.prefix_len.mean == pytest.approx(1570)


def test_generation_is_deterministic_and_seeded():
    a, b = generate(_spec()), generate(_spec())
    assert len(a.prompts) == 18 and all(np.array_equal(x, y) for x, y in zip(a.prompts, b.prompts))
    assert np.array_equal(a.group_of, b.group_of)
    c = generate(_spec(seed=1))
    assert not all(np.array_equal(x, y) for x, y in zip(a.prompts, c.prompts))


def test_prompts_follow_the_spec_and_are_shuffled():
    spec = _spec(num_groups=20, degree=IntRange(1, 4), prefix_len=IntRange(30, 60),
                 distinct_len=IntRange(3, 9), instruction_len=7)  # fmt: skip
    w = generate(spec)
    assert w.num_requests == sum(g.degree for g in w.layout)
    assert any(w.group_of[i] > w.group_of[i + 1] for i in range(w.num_requests - 1))  # shuffled
    inst = w.prompts[0][:7]
    seen_members = {g: [] for g in range(spec.num_groups)}
    for p, g in zip(w.prompts, w.group_of.tolist()):
        assert p.dtype == np.int32 and np.array_equal(p[:7], inst)
        assert 100 <= p.min() and p.max() < 5000
        seen_members[g].append(p)
    for g, layout in enumerate(w.layout):
        assert 1 <= layout.degree <= 4 and 30 <= layout.prefix_len <= 60
        members = seen_members[g]
        assert sorted(len(p) for p in members) == sorted(7 + layout.prefix_len + d for d in layout.distinct_lens)
        for i in range(len(members)):  # members part exactly after the group prefix
            for j in range(i):
                assert _lcp(members[i], members[j]) == 7 + layout.prefix_len
    firsts = [seen_members[g][0][7] for g in range(spec.num_groups)]
    assert len(set(firsts)) == spec.num_groups  # groups share only the instruction


@pytest.mark.parametrize(
    "spec",
    [
        _spec(),
        _spec(degree=IntRange(1, 5), prefix_len=IntRange(10, 80), distinct_len=IntRange(1, 30)),
        _spec(num_groups=12, degree=IntRange(1, 4), instruction_len=64, prefix_len=IntRange(20, 300)),
        # one group splits off the instruction, the rest share it
        _spec(num_groups=3, degree=IntRange(1, 1), instruction_len=20, prefix_len=IntRange(50, 50)),
        # groups whose own prefix is not worth computing the instruction again stay under it
        _spec(num_groups=4, degree=IntRange(2, 2), instruction_len=64, prefix_len=IntRange(20, 40)),
        # a single group left under the instruction merges with it
        _spec(num_groups=1, degree=IntRange(3, 3), instruction_len=200, prefix_len=IntRange(30, 30)),
        _spec(num_groups=30, degree=IntRange(1, 1), prefix_len=IntRange(0, 0), distinct_len=IntRange(50, 50)),
        _spec(prefix_len=IntRange(8, 12)),  # below min_prefix_tokens: nothing shared
    ],
)
def test_analytic_saving_equals_the_planners(spec):
    w = generate(spec)
    saving = analytic_saving(w, min_prefix_tokens=16)
    processed, shared = _planner_processed(w)
    assert saving.logical_prefill_tokens == sum(len(p) for p in w.prompts)
    assert (saving.processed_prefill_tokens, saving.num_shared_groups) == (processed, shared)


def test_scaled_industry_saving_matches_the_planner():
    w = generate(load_spec("industry").scaled(150))
    assert abs(w.num_requests - 150) < 40
    saving = analytic_saving(w)
    assert saving.processed_prefill_tokens == _planner_processed(w)[0]
    assert 0.5 < saving.ratio < 0.75


def test_paper_upper_bound_saving_of_the_microbenchmark():
    w = generate(load_spec("shared-2000-200-d16").scaled(32))
    assert w.num_requests == 32 and analytic_saving(w).ratio == pytest.approx(0.852, abs=5e-4)


def test_a_scaled_workload_is_the_first_groups_of_the_full_one():
    full, small = generate(_spec(num_groups=8)), generate(_spec(num_groups=3))
    want = {p.tobytes() for p, g in zip(full.prompts, full.group_of) if g < 3}
    assert {p.tobytes() for p in small.prompts} == want
    assert replace(_spec(), degree=IntRange(4, 4)).scaled(10).num_groups == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("num_groups = 2\ndistinct_len = 4\noutput_len = 1\ncolour = 3", "unknown field"),
        ("num_groups = 2\noutput_len = 1", "missing field distinct_len"),
        ("num_groups = 2\ndistinct_len = [9, 4]\noutput_len = 1", "lo <= hi"),
        ("num_groups = 50\ndistinct_len = 4\noutput_len = 1\nvocab = [0, 10]", "widen vocab"),
        ("num_groups = 2\ndegree = 4\ndistinct_len = 4\noutput_len = 1", "prefix_len >= 1"),
        ("num_groups = 2\ndistinct_len = 0\noutput_len = 1", "at least 1"),
    ],
)
def test_bad_specs_say_what_is_wrong(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec(text, "bad", "bad.toml")


def test_unknown_workload_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="peers-1b"):
        load_spec("no-such-workload")
    f = tmp_path / "mine.toml"
    f.write_text("num_groups = 2\ndegree = 2\nprefix_len = 20\ndistinct_len = 4\noutput_len = 3\n")
    spec = load_spec(str(f))
    assert spec.name == "mine" and generate(spec).num_requests == 4
