"""MaximizeReuse: flatten the radix tree into one level of prefix-sharing groups.

PAPER.md idea 1 (the paper's Algorithm 1). Bottom-up, at each node P, for each child C and each
grandchild G of C: splitting G off C into a group of its own (prefix = C's tokens then G's) saves
`(leaves(G) - 1) * tokens(G)` prefill tokens and costs `tokens(C)` (C's tokens are computed once
more, for the new group). A split happens when that gain is positive; a child left with a single
child merges with it. Lifted nodes keep climbing at the next level up, so a long deep prefix
reaches the root with all the tokens above it. At the end, every child of the root is a group:
its tokens are the shared prefix, all prompts below it are members.

Then the engine's rules: a member keeps at least one token of its own (the prefix is capped at
the shortest member's length - 1), and a prefix shorter than `min_prefix_tokens` is not worth a
group (its members become plain requests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.planner.radix import ROOT, RadixTree


def flatten(tree: RadixTree) -> tuple[list[int], list[int], list[list[int]]]:
    """Runs the bottom-up pass: the root's children after it, their prefix lengths, their leaves."""
    edge = (tree.depth - tree.depth[np.maximum(tree.parent, 0)]).tolist()  # the root's is 0
    leaves = (tree.hi - tree.lo).tolist()
    children = [list(c) for c in tree.children]
    for p in tree.post_order.tolist():
        kept_children: list[int] = []
        for c in children[p]:
            if not children[c]:  # a leaf: nothing below to split off
                kept_children.append(c)
                continue
            kept: list[int] = []
            for g in children[c]:
                if (leaves[g] - 1) * edge[g] > edge[c]:
                    edge[g] += edge[c]
                    leaves[c] -= leaves[g]
                    kept_children.append(g)
                else:
                    kept.append(g)
            if len(kept) == 1:  # C and its last child become one node
                edge[kept[0]] += edge[c]
                kept_children.append(kept[0])
            elif kept:
                children[c] = kept
                kept_children.append(c)
        children[p] = kept_children
    tops = children[ROOT]
    return tops, [edge[v] for v in tops], _collect(tops, children)


def _collect(tops: list[int], children: list[list[int]]) -> list[list[int]]:
    """Leaf nodes below each top node of the flattened tree."""
    out = []
    for t in tops:
        found, todo = [], [t]
        while todo:
            v = todo.pop()
            if children[v]:
                todo.extend(children[v])
            else:
                found.append(v)
        out.append(found)
    return out


def maximize_reuse(tree: RadixTree, min_prefix_tokens: int) -> list[PrefixGroup]:
    """One-level groups of the job (members ascending), in order of their smallest member."""
    tops, prefix_lens, leaf_sets = flatten(tree)
    request_of_leaf = np.full(tree.num_nodes, -1, dtype=np.int64)
    request_of_leaf[tree.leaf_of] = np.arange(tree.leaf_of.shape[0])
    lens = tree.depth  # a leaf's depth is its prompt's length
    groups: list[PrefixGroup] = []
    for prefix, leaf_nodes in zip(prefix_lens, leaf_sets):
        members = np.sort(request_of_leaf[leaf_nodes]).tolist()
        if len(members) > 1:
            prefix = min(prefix, int(lens[leaf_nodes].min()) - 1)
            if prefix >= min_prefix_tokens:
                groups.append(PrefixGroup(prefix, tuple(members)))
                continue
        groups.extend(PrefixGroup(0, (m,)) for m in members)
    groups.sort(key=lambda g: g.members[0])
    return groups


def processed_tokens(groups: Sequence[PrefixGroup], prompt_lens: np.ndarray) -> int:
    """Prefill tokens the groups compute: each prefix once plus every member's own part."""
    return sum(g.prefix_len * (1 - len(g.members)) for g in groups) + int(prompt_lens.sum())
