"""A compressed token radix tree over every prompt of a job, built from sorted prompts.

The prompts are sorted lexicographically by their token ids (see sort_prompts); the longest
common prefix (LCP) of each sorted neighbour pair then gives the tree in one stack pass, as a
suffix tree is built
from a suffix array. So the tree never looks at a token outside the sort and the LCPs, and a
node's leaves are a contiguous range of the sorted order.

Each prompt is read as if it ended with its own terminator token: every prompt ends at its own
leaf, even when it equals another prompt or is a prefix of one (those leaves have an edge of
zero real tokens). An edge is a slice of one representative prompt, never a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROOT = 0


def sort_prompts(prompts: Sequence[np.ndarray]) -> np.ndarray:
    """Indices of `prompts` in a lexicographic order of their ids, ties in input order.

    The keys are the ids' raw 4-byte little-endian bytes, compared by memcmp in Python's sort.
    That is lexicographic over the ids under a permuted order of the id values (bytes compare
    low byte first), which is all a prefix tree needs: prompts sharing a prefix stay
    contiguous and a proper prefix sorts before its extensions. It saves a conversion pass.
    """
    keys = [np.ascontiguousarray(p, dtype="<i4").tobytes() for p in prompts]
    order = sorted(range(len(prompts)), key=keys.__getitem__)
    return np.asarray(order, dtype=np.int64)


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """The number of leading ids `a` and `b` share."""
    m = min(a.shape[0], b.shape[0])
    if m == 0 or a[0] != b[0]:
        return 0
    diff = a[:m] != b[:m]
    k = int(diff.argmax())
    return k if diff[k] else m


def neighbour_lcps(prompts: Sequence[np.ndarray], order: np.ndarray) -> np.ndarray:
    """[n] int64: lcp[i] = shared ids of sorted prompts i-1 and i; lcp[0] = 0."""
    lcp = np.zeros(len(order), dtype=np.int64)
    prev = None
    for i, idx in enumerate(order.tolist()):
        cur = prompts[idx]
        if prev is not None:
            lcp[i] = common_prefix_len(prev, cur)
        prev = cur
    return lcp


@dataclass(frozen=True)
class RadixTree:
    """The compressed prefix tree of a job's prompts; node 0 is the root (depth 0).

    Node arrays are indexed by node id. `depth[v]` is the number of real tokens from the root
    to the end of v's edge (a leaf's depth is its prompt's length). Leaves of v are the sorted
    prompts lo[v]..hi[v]-1. Children lists are in sorted order.
    """

    prompts: Sequence[np.ndarray]  # the job's prompt ids, not copied
    order: np.ndarray  # [n] int64: sorted position -> request index
    lcp: np.ndarray  # [n] int64: LCP with the previous sorted prompt
    parent: np.ndarray  # [num_nodes] int64, -1 for the root
    depth: np.ndarray  # [num_nodes] int64
    lo: np.ndarray  # [num_nodes] int64
    hi: np.ndarray  # [num_nodes] int64
    is_leaf: np.ndarray  # [num_nodes] bool
    children: tuple[tuple[int, ...], ...]
    leaf_of: np.ndarray  # [n] int64: request index -> its leaf node
    post_order: np.ndarray  # [num_internal] int64: internal nodes, children before parents

    @property
    def num_nodes(self) -> int:
        return int(self.depth.shape[0])

    def num_leaves(self, v: int) -> int:
        return int(self.hi[v] - self.lo[v])

    def leaves(self, v: int) -> np.ndarray:
        """Request indices of the prompts below v, in sorted order."""
        return self.order[self.lo[v] : self.hi[v]]

    def edge_len(self, v: int) -> int:
        return 0 if v == ROOT else int(self.depth[v] - self.depth[self.parent[v]])

    def edge_tokens(self, v: int) -> np.ndarray:
        """The ids on the edge into v: a view of one of its prompts."""
        if v == ROOT:
            return (
                self.prompts[int(self.order[0])][:0] if len(self.order) else np.zeros(0, np.int32)
            )
        start = int(self.depth[self.parent[v]])
        return self.prompts[int(self.order[self.lo[v]])][start : int(self.depth[v])]

    def path(self, request: int) -> list[int]:
        """Nodes from a child of the root down to the leaf of `request`."""
        nodes = []
        v = int(self.leaf_of[request])
        while v != ROOT:
            nodes.append(v)
            v = int(self.parent[v])
        return nodes[::-1]

    @classmethod
    def build(cls, prompts: Sequence[np.ndarray]) -> RadixTree:
        """The tree of `prompts` (int arrays), in O(sort + total LCP) time."""
        n = len(prompts)
        order = sort_prompts(prompts)
        lcp = neighbour_lcps(prompts, order)
        lens = [int(prompts[i].shape[0]) for i in order.tolist()]

        # virtual depth: a leaf sits one terminator below its last real token
        parent, depth, lo, hi, leaf = [-1], [0], [0], [n], [False]
        children: list[list[int]] = [[]]
        post: list[int] = []
        leaf_sorted = [0] * n

        def new(d: int, start: int, is_leaf: bool) -> int:
            for column, value in ((parent, -1), (depth, d), (lo, start), (hi, start)):
                column.append(value)
            leaf.append(is_leaf)
            children.append([])
            return len(depth) - 1

        def attach(child: int, to: int) -> None:
            parent[child] = to
            children[to].append(child)

        stack = [ROOT]
        for i, shared in enumerate(lcp.tolist()):
            while depth[stack[-1]] > shared:
                last = stack.pop()
                hi[last] = i
                if not leaf[last]:
                    post.append(last)
                if depth[stack[-1]] >= shared:
                    attach(last, stack[-1])
                else:  # the branch point of prompts i-1 and i lies inside the edge into last
                    mid = new(shared, lo[last], False)
                    attach(last, mid)
                    stack.append(mid)
            leaf_sorted[i] = new(lens[i] + 1, i, True)
            stack.append(leaf_sorted[i])
        while len(stack) > 1:
            last = stack.pop()
            hi[last] = n
            if not leaf[last]:
                post.append(last)
            attach(last, stack[-1])
        post.append(ROOT)

        is_leaf = np.asarray(leaf, dtype=bool)
        depth_arr = np.asarray(depth, dtype=np.int64)
        depth_arr[is_leaf] -= 1  # back to real tokens
        leaf_of = np.empty(n, dtype=np.int64)
        leaf_of[order] = np.asarray(leaf_sorted, dtype=np.int64)
        return cls(
            prompts=prompts,
            order=order,
            lcp=lcp,
            parent=np.asarray(parent, dtype=np.int64),
            depth=depth_arr,
            lo=np.asarray(lo, dtype=np.int64),
            hi=np.asarray(hi, dtype=np.int64),
            is_leaf=is_leaf,
            children=tuple(tuple(c) for c in children),
            leaf_of=leaf_of,
            post_order=np.asarray(post, dtype=np.int64),
        )
