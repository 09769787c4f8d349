"""The token radix tree: sorted order, neighbour LCPs, and the shape of the tree."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.planner.radix import (
    ROOT,
    RadixTree,
    common_prefix_len,
    neighbour_lcps,
    sort_prompts,
)


def arrays(*prompts: list[int]) -> list[np.ndarray]:
    return [np.asarray(p, dtype=np.int32) for p in prompts]


def test_hand_made_tree() -> None:
    # 0 and 4 are identical, 1 is a prefix of them, 5 is empty
    prompts = arrays([1, 2, 3, 4], [1, 2, 3], [1, 2, 5], [7], [1, 2, 3, 4], [])
    tree = RadixTree.build(prompts)
    assert tree.order.tolist() == [5, 1, 0, 4, 2, 3]
    assert tree.lcp.tolist() == [0, 0, 3, 4, 2, 0]

    top = {tuple(tree.edge_tokens(c).tolist()): c for c in tree.children[ROOT]}
    assert set(top) == {(), (1, 2), (7,)}
    n12 = top[(1, 2)]
    assert tree.depth[n12] == 2 and sorted(tree.leaves(n12).tolist()) == [0, 1, 2, 4]
    kids = {tuple(tree.edge_tokens(c).tolist()): c for c in tree.children[n12]}
    assert set(kids) == {(3,), (5,)}
    n123 = kids[(3,)]
    assert not tree.is_leaf[n123] and tree.num_leaves(n123) == 3
    # prompt 1 ends at depth 3: its leaf hangs below n123 with an empty edge
    assert tree.parent[tree.leaf_of[1]] == n123 and tree.edge_len(int(tree.leaf_of[1])) == 0
    # the identical prompts 0 and 4 are sibling leaves with empty edges below [1,2,3,4]
    p0, p4 = tree.parent[tree.leaf_of[0]], tree.parent[tree.leaf_of[4]]
    assert p0 == p4 and tree.depth[p0] == 4
    assert tree.path(2) == [n12, int(tree.leaf_of[2])]
    # children come before their parents in post_order, and the root is last
    pos = {v: i for i, v in enumerate(tree.post_order.tolist())}
    assert tree.post_order[-1] == ROOT
    assert pos[int(p0)] < pos[n123] < pos[n12]


def test_edges_are_views_not_copies() -> None:
    prompts = arrays(list(range(100)), list(range(50)) + [999] * 10)
    tree = RadixTree.build(prompts)
    for v in range(1, tree.num_nodes):
        edge = tree.edge_tokens(v)
        assert edge.base is not None  # a slice of a prompt array


def test_empty_input() -> None:
    tree = RadixTree.build([])
    assert tree.num_nodes == 1 and tree.children[ROOT] == ()


def test_common_prefix_len() -> None:
    a = np.array([1, 2, 3], np.int32)
    assert common_prefix_len(a, np.array([1, 2, 3, 4], np.int32)) == 3
    assert common_prefix_len(a, np.array([1, 9], np.int32)) == 1
    assert common_prefix_len(a, np.array([2], np.int32)) == 0
    assert common_prefix_len(a, np.array([], np.int32)) == 0


def assert_trie_order(prompts: list[np.ndarray], order: list[int]) -> None:
    """Prompts sharing a prefix are contiguous, prefixes first, equal prompts in input order."""
    lists = [prompts[i].tolist() for i in order]
    for a in range(len(lists)):
        for b in range(a + 1, len(lists)):
            shared = common_prefix_len(prompts[order[a]], prompts[order[b]])
            for k in range(a + 1, b):  # anything between two prompts shares at least their prefix
                assert lists[k][:shared] == lists[a][:shared]
            if lists[b][: len(lists[a])] != lists[a] and lists[a][: len(lists[b])] == lists[b]:
                raise AssertionError(f"{lists[b]} is a prefix of {lists[a]} but sorts after it")
            if lists[a] == lists[b]:
                assert order[a] < order[b]


def test_sort_handles_large_ids() -> None:
    # ids above 2**8, 2**24 and up to 2**31 - 1: their bytes must group them like the ids
    big = [2**31 - 1, 256, 2**24 + 1, 1, 65536]
    prompts = arrays(big, [256], [2**24 + 1, 0], [1, 2**31 - 1], [1], big[:3], big, [256, 1])
    order = sort_prompts(prompts).tolist()
    assert_trie_order(prompts, order)
    tree = RadixTree.build(prompts)
    node = int(tree.parent[tree.leaf_of[0]])  # the two copies of `big`, then its 3-token prefix
    assert sorted(tree.leaves(node).tolist()) == [0, 6] and tree.depth[node] == 5
    assert sorted(tree.leaves(int(tree.parent[node])).tolist()) == [0, 5, 6]


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_reconstruct_prompts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bases = [rng.integers(0, 3, size=rng.integers(0, 12)) for _ in range(3)]
    prompts = [
        np.concatenate(
            [bases[rng.integers(3)][: rng.integers(0, 12)], rng.integers(0, 3, rng.integers(0, 5))]
        ).astype(np.int32)
        for _ in range(rng.integers(1, 25))
    ]
    tree = RadixTree.build(prompts)
    as_lists = [p.tolist() for p in prompts]
    assert_trie_order(prompts, tree.order.tolist())
    ref_lcp = [0] + [
        common_prefix_len(prompts[a], prompts[b]) for a, b in zip(tree.order[:-1], tree.order[1:])
    ]
    assert tree.lcp.tolist() == ref_lcp == neighbour_lcps(prompts, tree.order).tolist()
    for i, p in enumerate(prompts):
        # the edges along a prompt's path spell it
        assert (
            np.concatenate([tree.edge_tokens(v) for v in tree.path(i)] or [p[:0]]).tolist()
            == p.tolist()
        )
        assert tree.depth[tree.leaf_of[i]] == len(p)
    for v in range(tree.num_nodes):
        if tree.is_leaf[v]:
            continue
        members = [as_lists[i] for i in tree.leaves(v)]
        d = int(tree.depth[v])
        assert all(m[:d] == members[0][:d] for m in members)  # they share the node's prefix
        if v != ROOT:
            assert len(tree.children[v]) >= 2  # compressed: no unary internal nodes
            assert tree.depth[v] > tree.depth[tree.parent[v]]
        # real edges below a node start with different tokens
        firsts = [int(tree.edge_tokens(c)[0]) for c in tree.children[v] if tree.edge_len(c) > 0]
        assert len(firsts) == len(set(firsts))
