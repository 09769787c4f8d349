"""MaximizeReuse: where splitting a grandchild off pays, where it does not, and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.planner.plan import check_groups
from batchllm_cli.planner.radix import RadixTree
from batchllm_cli.planner.reuse import maximize_reuse, processed_tokens
from batchllm_cli.types import Request

_next = iter(range(1000, 10**6))


def fresh(n: int) -> list[int]:
    """n token ids never used before, so runs differ at their first token."""
    return [next(_next) for _ in range(n)]


def groups_of(prompts: list[list[int]], min_prefix: int = 1) -> set[tuple[int, tuple[int, ...]]]:
    arrays = [np.asarray(p, dtype=np.int32) for p in prompts]
    groups = maximize_reuse(RadixTree.build(arrays), min_prefix)
    check_groups(groups, [Request(i, str(i), a) for i, a in enumerate(arrays)])
    return {(g.prefix_len, g.members) for g in groups}


def test_figure3_split_pays() -> None:
    # root -> C (10 tokens) -> G1 (100 tokens, 4 prompts), G2 (3 tokens, 2 prompts), one more prompt
    c, g1, g2 = fresh(10), fresh(100), fresh(3)
    prompts = (
        [c + g1 + fresh(5) for _ in range(4)]
        + [c + g2 + fresh(5) for _ in range(2)]
        + [c + fresh(7)]
    )
    # G1: gain (4-1)*100 - 10 > 0: its own group with prefix C+G1; G2: (2-1)*3 - 10 < 0: stays in C
    assert groups_of(prompts) == {(110, (0, 1, 2, 3)), (10, (4, 5, 6))}


def test_figure3_split_does_not_pay() -> None:
    # C of 50 tokens; G1 of 10 tokens shared by 3: (3-1)*10 - 50 < 0, so one group on C
    c, g1 = fresh(50), fresh(10)
    prompts = [c + g1 + fresh(4) for _ in range(3)] + [c + fresh(4) for _ in range(2)]
    assert groups_of(prompts) == {(50, (0, 1, 2, 3, 4))}
    # the same tree with a longer G1 splits: (3-1)*30 - 50 > 0; C keeps the other two
    g1 = fresh(30)
    prompts = [c + g1 + fresh(4) for _ in range(3)] + [c + fresh(4) for _ in range(2)]
    assert groups_of(prompts) == {(80, (0, 1, 2)), (50, (3, 4))}


def test_all_grandchildren_split_and_a_lone_child_merges() -> None:
    c, a, b = fresh(5), fresh(100), fresh(100)
    prompts = [c + a + fresh(3) for _ in range(3)] + [c + b + fresh(3) for _ in range(3)]
    # both split off; C is left with nothing
    assert groups_of(prompts) == {(105, (0, 1, 2)), (105, (3, 4, 5))}
    # with a third single prompt under C, C keeps only it: merged into a plain request
    prompts.append(c + fresh(3))
    assert groups_of(prompts) == {(105, (0, 1, 2)), (105, (3, 4, 5)), (0, (6,))}


def test_deep_prefix_climbs_to_the_root() -> None:
    # root -> C (20) -> D (20) -> H (300, 3 prompts); H is lifted twice and ends with 340 tokens
    c, d, h = fresh(20), fresh(20), fresh(300)
    prompts = [c + d + h + fresh(2) for _ in range(3)]
    prompts += [c + d + fresh(2), c + d + fresh(2), c + fresh(2), c + fresh(2)]
    # D keeps its two own prompts ((2-1)*20 - 20 is no gain), so C's group is D's and C's prompts
    assert groups_of(prompts) == {(340, (0, 1, 2)), (20, (3, 4, 5, 6))}


def test_nested_prefixes_keep_one_own_token() -> None:
    x = fresh(100)
    # prompt 0 is a prefix of 1, which is a prefix of 2: the group prefix stops one short of 0
    assert groups_of([x[:50], x[:80], x]) == {(49, (0, 1, 2))}


def test_identical_prompts() -> None:
    x = fresh(40)
    assert groups_of([x, x, x]) == {(39, (0, 1, 2))}
    assert groups_of([x, x, x], min_prefix=40) == {(0, (0,)), (0, (1,)), (0, (2,))}


def test_short_and_empty_prompts_stay_plain() -> None:
    assert groups_of([[5], [5], [5, 6]]) == {(0, (0,)), (0, (1,)), (0, (2,))}
    assert groups_of([[], [], [7]]) == {(0, (0,)), (0, (1,)), (0, (2,))}
    assert groups_of([[5, 6], [5, 7]]) == {(1, (0, 1))}


def test_min_prefix_tokens() -> None:
    x = fresh(15)
    prompts = [x + fresh(3), x + fresh(3)]
    assert groups_of(prompts, min_prefix=15) == {(15, (0, 1))}
    assert groups_of(prompts, min_prefix=16) == {(0, (0,)), (0, (1,))}


def test_random_prompt_sets_keep_the_invariants() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(200):
        stems = [rng.integers(0, 4, size=rng.integers(1, 30)).tolist() for _ in range(4)]
        prompts = [
            stems[rng.integers(4)][: rng.integers(0, 30)]
            + rng.integers(0, 4, size=rng.integers(0, 6)).tolist()
            for _ in range(rng.integers(1, 40))
        ]
        arrays = [np.asarray(p, dtype=np.int32) for p in prompts]
        min_prefix = int(rng.integers(1, 6))
        groups = maximize_reuse(RadixTree.build(arrays), min_prefix)
        requests = [Request(i, str(i), a) for i, a in enumerate(arrays)]
        check_groups(groups, requests)  # one group each, shared prefix, an own token each
        members = sorted(m for g in groups for m in g.members)
        assert members == list(range(len(prompts)))
        lens = np.array([len(p) for p in prompts])
        for g in groups:
            assert g.prefix_len == 0 or g.prefix_len >= min_prefix
            for m in g.members:  # every prompt is the prefix followed by its own part
                own = prompts[m][g.prefix_len :]
                assert prompts[g.members[0]][: g.prefix_len] + own == prompts[m]
        processed = processed_tokens(groups, lens)
        assert processed <= lens.sum()
        assert processed == sum(g.prefix_len for g in groups) + sum(
            len(prompts[m]) - g.prefix_len for g in groups for m in g.members
        )


@pytest.mark.parametrize("degree", [1, 2, 16])
def test_star_saving_is_exact(degree: int) -> None:
    prefix = fresh(200)
    prompts = [prefix + fresh(20) for _ in range(degree)]
    groups = maximize_reuse(RadixTree.build([np.asarray(p, np.int32) for p in prompts]), 16)
    lens = np.array([len(p) for p in prompts])
    expected = 220 * degree if degree == 1 else 200 + 20 * degree
    assert processed_tokens(groups, lens) == expected
