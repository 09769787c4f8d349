"""What a vLLM-style LRU prefix cache of the same KV size would save on the job, in file order.

The model (kept simple, and where it errs it errs in the cache's favour):
- The KV pool holds `num_kv_blocks` blocks of `block_size` tokens. A full prompt block is
  cached under the hash of its whole prefix (vLLM's block hashing); a new request reuses the
  longest run of leading blocks found in the cache, at most (prompt_len - 1) tokens, since the
  last prompt token is always computed; those tokens are not prefilled again.
- Requests are admitted in file order, each reserving its prompt plus max_tokens worth of
  blocks (the partial last prompt block and the decode blocks are never shared), at most
  `max_running` at once (vLLM's max_num_seqs, 256). When the next one does not fit, the
  earliest admitted finishes first (equal output lengths end in admission order).
- Blocks of running requests cannot be evicted. A finished request's cached blocks become
  evictable, its last block first (vLLM frees in reverse order); eviction takes the least
  recently freed block.
- In the cache's favour: a request admitted while another one is still prefilling the same
  prefix counts those blocks as hits at once.

Blocks that end inside the same radix-tree edge are used by exactly the same requests, so they
are freed together and evicted from their tail; the simulation therefore tracks one unit per
tree edge (how many of its leading blocks are cached), not one entry per block. That keeps it
linear in the number of requests times the tree depth.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from batchllm_cli.planner.radix import ROOT, RadixTree

VLLM_MAX_NUM_SEQS = 256  # vLLM's default cap on running requests


@dataclass(frozen=True)
class LruResult:
    """Prefill tokens of the job with an LRU prefix cache."""

    logical_prefill_tokens: int
    hit_tokens: int  # prompt tokens taken from the cache

    @property
    def processed_prefill_tokens(self) -> int:
        return self.logical_prefill_tokens - self.hit_tokens

    @property
    def saving_ratio(self) -> float:
        return self.hit_tokens / self.logical_prefill_tokens if self.logical_prefill_tokens else 0.0


def simulate_lru(
    tree: RadixTree,
    max_tokens: np.ndarray,  # [num_requests] int64
    block_size: int,
    num_kv_blocks: int,
    max_running: int = VLLM_MAX_NUM_SEQS,
) -> LruResult:
    """Runs the job's requests in file order through the cache model of the module docstring."""
    parent = tree.parent.tolist()
    depth_blocks = tree.depth // block_size
    blocks = (depth_blocks - depth_blocks[np.maximum(tree.parent, 0)]).tolist()
    lens = [int(p.shape[0]) for p in tree.prompts]
    leaf_of = tree.leaf_of.tolist()
    resident = [0] * tree.num_nodes  # cached leading blocks of each edge
    ref = [0] * tree.num_nodes  # running requests using the edge
    lru: OrderedDict[int, None] = OrderedDict()  # evictable edges, least recently freed first
    running: deque[tuple[list[int], int]] = deque()  # (path, private blocks) per request
    in_use = evictable = hit_tokens = 0

    def retire() -> None:
        nonlocal in_use, evictable
        path, private = running.popleft()
        in_use -= private
        for v in reversed(path):
            ref[v] -= 1
            if ref[v] == 0:
                in_use -= blocks[v]
                if resident[v]:
                    lru[v] = None
                    evictable += resident[v]

    for r, length in enumerate(lens):
        path = []
        v = leaf_of[r]
        while v != ROOT:
            path.append(v)
            v = parent[v]
        path.reverse()
        private = -(-(length + int(max_tokens[r])) // block_size) - length // block_size

        while running:
            claim = private + sum(blocks[v] for v in path if ref[v] == 0)
            if in_use + claim <= num_kv_blocks and len(running) < max_running:
                break
            retire()

        hits = 0
        for v in path:
            hits += resident[v]
            if resident[v] < blocks[v]:
                break
        hit_tokens += min(hits, max(length - 1, 0) // block_size) * block_size

        for v in path:
            if ref[v] == 0:
                if v in lru:
                    del lru[v]
                    evictable -= resident[v]
                in_use += blocks[v]
            ref[v] += 1
            resident[v] = blocks[v]  # the request computes what was missing
        in_use += private
        running.append((path, private))

        over = in_use + evictable - num_kv_blocks
        while over > 0 and lru:
            u = next(iter(lru))
            k = min(resident[u], over)
            resident[u] -= k
            evictable -= k
            over -= k
            if resident[u] == 0:
                del lru[u]
    return LruResult(logical_prefill_tokens=int(sum(lens)), hit_tokens=int(hit_tokens))
