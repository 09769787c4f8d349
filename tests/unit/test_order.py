"""Group order: larger decode/prefill ratio first, ties by the smallest input index."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.planner.order import decode_prefill_ratio, order_groups
from batchllm_cli.planner.plan import PrefixGroup


def test_ratio_counts_the_prefix_once() -> None:
    lens = np.array([100, 120, 50])
    out = np.array([10, 30, 7])
    g = PrefixGroup(80, (0, 1))
    # prefill = 80 + 20 + 40, decode = 40
    assert decode_prefill_ratio(g, lens, out) == pytest.approx(40 / 140)
    assert decode_prefill_ratio(PrefixGroup(0, (2,)), lens, out) == pytest.approx(7 / 50)


def test_fewer_prompt_tokens_first_with_equal_outputs() -> None:
    lens = np.array([500, 100, 300, 300, 1000, 1000])
    out = np.full(6, 100)
    groups = [
        PrefixGroup(0, (0,)),  # 100/500
        PrefixGroup(0, (1,)),  # 100/100
        PrefixGroup(290, (2, 3)),  # 200/310: the shared prefix makes it cheap
        PrefixGroup(900, (4, 5)),  # 200/1100
    ]
    ordered = order_groups(groups, lens, out)
    assert [g.members for g in ordered] == [(1,), (2, 3), (0,), (4, 5)]


def test_ties_keep_input_order_and_output_length_counts() -> None:
    lens = np.array([10, 10, 10, 10])
    out = np.array([5, 5, 50, 5])
    groups = [
        PrefixGroup(0, (3,)),
        PrefixGroup(0, (1,)),
        PrefixGroup(0, (0,)),
        PrefixGroup(0, (2,)),
    ]
    ordered = order_groups(groups, lens, out)
    # request 2 decodes the most per prefill token; the others tie and follow by index
    assert [g.members for g in ordered] == [(2,), (0,), (1,), (3,)]


def test_order_is_a_permutation_and_deterministic() -> None:
    rng = np.random.default_rng(7)
    lens = rng.integers(1, 50, size=60)
    out = rng.integers(1, 20, size=60)
    perm = rng.permutation(60)
    groups = [PrefixGroup(0, (int(i),)) for i in perm]
    a = order_groups(groups, lens, out)
    b = order_groups(list(reversed(groups)), lens, out)
    assert a == b  # the order depends on the groups, not on how they were listed
    assert sorted(g.members[0] for g in a) == list(range(60))
    ratios = [out[g.members[0]] / lens[g.members[0]] for g in a]
    assert all(x >= y for x, y in zip(ratios, ratios[1:]))


def test_empty() -> None:
    assert order_groups([], np.zeros(0, np.int64), np.zeros(0, np.int64)) == ()
