"""The LRU prefix-cache simulation: hand cases and a block-by-block reference of the same model."""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np
import pytest

from batchllm_cli.planner.lru_sim import simulate_lru
from batchllm_cli.planner.radix import RadixTree


def run(
    prompts: list[list[int]],
    max_tokens: list[int] | int,
    block_size: int,
    pool: int,
    max_running: int = 256,
):
    arrays = [np.asarray(p, dtype=np.int32) for p in prompts]
    out = np.broadcast_to(np.asarray(max_tokens, dtype=np.int64), (len(arrays),))
    return simulate_lru(RadixTree.build(arrays), out, block_size, pool, max_running)


def reference_hits(prompts, max_tokens, bs: int, pool: int, max_running: int) -> int:
    """The model of lru_sim's docstring, one cache entry per block keyed by its whole prefix."""
    resident: set[bytes] = set()
    ref: dict[bytes, int] = {}
    lru: OrderedDict[bytes, None] = OrderedDict()
    running: deque[tuple[list[bytes], int]] = deque()
    in_use = hits_total = 0
    for p, mt in zip(prompts, max_tokens):
        p = np.asarray(p, dtype=np.int32)
        keys = [p[: (j + 1) * bs].tobytes() for j in range(len(p) // bs)]
        private = -(-(len(p) + mt) // bs) - len(p) // bs
        while running and (
            in_use + private + sum(ref.get(k, 0) == 0 for k in keys) > pool
            or len(running) >= max_running
        ):
            old, old_private = running.popleft()
            in_use -= old_private
            for k in reversed(old):
                ref[k] -= 1
                if ref[k] == 0:
                    in_use -= 1
                    lru[k] = None
        hits = 0
        for k in keys:
            if k not in resident:
                break
            hits += 1
        hits_total += min(hits, max(len(p) - 1, 0) // bs) * bs
        for k in keys:
            if ref.get(k, 0) == 0:
                lru.pop(k, None)
                in_use += 1
            ref[k] = ref.get(k, 0) + 1
            resident.add(k)
        in_use += private
        running.append((keys, private))
        while in_use + len(lru) > pool and lru:
            k, _ = lru.popitem(last=False)
            resident.discard(k)
    return hits_total


def test_second_identical_prompt_hits_all_but_the_last_token() -> None:
    assert run([list(range(33))] * 2, 4, 16, 100).hit_tokens == 32
    # 32 tokens: the last token must be computed, so only the first block is reused
    assert run([list(range(32))] * 2, 4, 16, 100).hit_tokens == 16
    assert run([list(range(15))] * 2, 4, 16, 100).hit_tokens == 0  # no full block


def test_eviction_in_a_small_pool() -> None:
    a = list(range(100, 164))  # 4 blocks
    b = list(range(500, 564))
    job = [a + [1], b + [2], a + [3]]
    # room for everything: the third prompt reuses a's 4 blocks
    assert run(job, 1, 16, 100).hit_tokens == 64
    # room for one request (5 blocks each) at a time: b's blocks evict a's before they return
    res = run(job, 1, 16, 5)
    assert res.hit_tokens == 0 and res.saving_ratio == 0
    # the prefix shared by running requests is counted once: both fit together in 6 blocks
    assert run([a + [1], a + [2]], 1, 16, 6).hit_tokens == 64


def test_last_block_is_evicted_first() -> None:
    a = list(range(100, 164))  # 4 full blocks, then 1 own block (token + output)
    job = [a + [1], list(range(900, 932)) + [5], a + [3]]
    # pool 6: b needs 3 blocks; 5 + 3 > 6 retires a, whose 4 cached blocks become evictable;
    # with b's 3 held, 1 of a's must go: its last, so 3 blocks survive for the third prompt
    assert run(job, 1, 16, 6).hit_tokens == 48
    assert run(job, 1, 16, 7).hit_tokens == 64  # 3 + 4 fit: nothing is evicted


def test_max_running_one_is_sequential() -> None:
    a = list(range(64))
    assert run([a + [1], a + [2]], 1, 16, 100, max_running=1).hit_tokens == 64


@pytest.mark.parametrize("seed", range(30))
def test_matches_block_by_block_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bs = int(rng.choice([2, 4, 8]))
    stems = [rng.integers(0, 5, size=rng.integers(4, 40)).tolist() for _ in range(4)]
    prompts = [
        stems[rng.integers(4)][: rng.integers(0, 40)]
        + rng.integers(0, 5, size=rng.integers(0, 12)).tolist()
        for _ in range(rng.integers(2, 40))
    ]
    max_tokens = rng.integers(1, 10, size=len(prompts)).tolist()
    pool = int(rng.integers(4, 60))
    max_running = int(rng.integers(1, 6))
    got = run(prompts, max_tokens, bs, pool, max_running)
    assert got.hit_tokens == reference_hits(prompts, max_tokens, bs, pool, max_running)
    assert got.processed_prefill_tokens == sum(map(len, prompts)) - got.hit_tokens
