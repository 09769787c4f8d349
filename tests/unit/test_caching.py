"""The peers' caching schedulers (vllm-like, sglang-like) and their LRU prefix cache.

Driven by test_scheduler's fake model, which reads every item's context back through its block
table: a cached block reused with the wrong tokens, or evicted while in use, changes the outputs,
which must equal running each prompt alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.caching import CachingAdmission, caching_scheduler, make_scheduler
from batchllm_cli.engine.prefix_cache import PrefixCache
from batchllm_cli.engine.scheduler import Scheduler
from batchllm_cli.types import Request, SamplingParams
from test_scheduler import FakeModel, make_workload, run_alone, stop_on_eos


def run_policy(requests, policy, *, num_blocks, block_size, token_budget, memory_bound=1.0):
    """Runs `requests` in file order under `policy`, checking block integrity at every step."""
    pool = BlockPool(num_blocks)
    sched = caching_scheduler(requests, pool, block_size=block_size, token_budget=token_budget,
                             memory_bound=memory_bound, policy=policy)
    model = FakeModel(num_blocks, block_size, requests, sched.groups)
    outputs, prefill, cached, order = {}, 0, {}, []
    while sched.has_work:
        batch = sched.schedule()
        assert batch.items and batch.num_tokens <= token_budget
        assert pool.num_used - sched.admission.cache.num_evictable <= sched.block_limit
        prefill += batch.num_prefill_tokens
        for state in sched.active_states().values():
            if state.index not in cached:
                cached[state.index] = state.cached_len
                order.append(state.index)
        for s in sched.update(batch, model.run(batch), stop_on_eos):
            outputs[s.index] = s.output_ids
        pool.check_integrity(sched.live_block_lists())
    assert pool.num_used == sched.admission.cache.num_cached == sched.admission.cache.num_evictable  # only the cache holds blocks
    return outputs, prefill, cached, order, sched


def _in_file_order(seed):
    requests, _ = make_workload(seed)
    rng = np.random.default_rng(seed)
    return [requests[i] for i in rng.permutation(len(requests))]


@pytest.mark.parametrize("policy", ["vllm-like", "sglang-like"])
@pytest.mark.parametrize("seed,block_size,token_budget,num_blocks", [(0, 4, 16, 400), (1, 8, 33, 60), (2, 1, 24, 300)])
def test_outputs_equal_running_each_prompt_alone(policy, seed, block_size, token_budget, num_blocks):
    requests = [Request(i, r.id, r.prompt_ids, r.sampling) for i, r in enumerate(_in_file_order(seed))]
    outputs, prefill, cached, _, _ = run_policy(requests, policy, num_blocks=num_blocks, block_size=block_size,
                                                token_budget=token_budget)
    assert outputs == {r.index: run_alone(r) for r in requests}
    prompts = sum(r.prompt_len for r in requests)
    assert prefill == prompts - sum(cached.values())  # what the cache held was not computed again
    assert sum(cached.values()) > 0  # the workload's shared prefixes were found


def test_a_small_pool_evicts_and_loses_reuse_that_a_large_one_keeps():
    prefix = np.arange(1, 33, dtype=np.int32)  # 8 blocks of 4
    other = np.arange(40, 72, dtype=np.int32)
    prompts = [prefix, other, prefix, other, prefix]  # alternating, as a shuffled file does
    requests = [Request(i, str(i), np.concatenate([p, [i + 1]]).astype(np.int32), SamplingParams(max_tokens=2))
                for i, p in enumerate(prompts)]
    _, _, big, _, s_big = run_policy(requests, "vllm-like", num_blocks=100, block_size=4, token_budget=8)
    _, _, small, _, s_small = run_policy(requests, "vllm-like", num_blocks=12, block_size=4, token_budget=8)
    assert big[0] == big[1] == 0 and big[2] == big[4] == 32  # 8 whole blocks of the prefix reused
    assert s_small.admission.cache.evictions > 0 and sum(small.values()) < sum(big.values())


def test_vllm_like_caps_running_requests():
    requests = [Request(i, str(i), np.arange(1, 6, dtype=np.int32), SamplingParams(max_tokens=5)) for i in range(6)]
    pool = BlockPool(200)
    sched = caching_scheduler(requests, pool, block_size=4, token_budget=64, memory_bound=1.0, policy="vllm-like")
    sched.max_running = 2
    batch = sched.schedule()
    assert len({it.request for it in batch.items}) == 2


def test_sglang_like_admits_the_longest_cached_match_first():
    shared = np.arange(1, 17, dtype=np.int32)
    first = Request(0, "a", np.concatenate([shared, [90]]).astype(np.int32), SamplingParams(max_tokens=1))
    cold = Request(1, "b", np.arange(30, 47, dtype=np.int32), SamplingParams(max_tokens=1))
    warm = Request(2, "c", np.concatenate([shared, [91]]).astype(np.int32), SamplingParams(max_tokens=1))
    orders = {}
    for policy in ("vllm-like", "sglang-like"):
        # a budget of one prompt per step: "a" runs and is cached before the others are picked
        _, _, _, order, _ = run_policy([first, cold, warm], policy, num_blocks=100, block_size=4, token_budget=17)
        orders[policy] = order
    assert orders == {"vllm-like": [0, 1, 2], "sglang-like": [0, 2, 1]}


def test_prefix_cache_matches_whole_blocks_and_never_the_last_token():
    pool = BlockPool(10)
    cache = PrefixCache(pool, block_size=4)
    prompt = np.arange(8, dtype=np.int32)  # exactly two blocks
    blocks = pool.allocate(2)
    cache.insert(cache.hashes(prompt), blocks)
    assert cache.match(cache.hashes(prompt)) == 1  # the last block holds the last prompt token: computed again
    assert cache.match(cache.hashes(np.arange(9, dtype=np.int32))) == 2
    assert cache.match(cache.hashes(np.array([0, 1, 2, 9, 4], dtype=np.int32))) == 0
    pool.free(blocks)
    cache.released(blocks)
    assert cache.num_evictable == 2 and pool.num_used == 2
    cache.evict(2)
    assert pool.num_used == 0 and cache.match(cache.hashes(np.arange(9, dtype=np.int32))) == 0


def test_make_scheduler_picks_by_policy():
    requests = [Request(0, "a", np.arange(5, dtype=np.int32), SamplingParams(max_tokens=4))]
    settings = dict(block_size=4, token_budget=8, memory_bound=1.0)
    from batchllm_cli.planner.plan import PrefixGroup

    assert type(make_scheduler("batchllm", requests, [PrefixGroup(0, (0,))], BlockPool(8), **settings)) is Scheduler
    assert isinstance(make_scheduler("sglang-like", requests, [], BlockPool(8), **settings).admission, CachingAdmission)


@pytest.mark.parametrize("policy", ["vllm-like", "sglang-like"])
def test_a_cached_prefix_it_takes_is_not_counted_as_free_memory(policy):
    # A's two full prompt blocks stay cached (evictable) after it finishes. B reuses them, so
    # taking them pins them: they can no longer be evicted to make room for B's other 3 blocks.
    # With C holding 2 of the 6 blocks, only 2 are free: B must wait for C, not evict nothing.
    a = np.arange(1, 10, dtype=np.int32)  # 9 tokens: 2 full blocks of 4 + 1
    c = np.array([40, 41, 42, 43], dtype=np.int32)
    b = np.concatenate([a[:8], np.arange(20, 28)]).astype(np.int32)  # 16 tokens, A's 2 blocks first
    requests = [Request(0, "a", a, SamplingParams(max_tokens=1)), Request(1, "c", c, SamplingParams(max_tokens=2)),
                Request(2, "b", b, SamplingParams(max_tokens=5))]
    outputs, _, cached, _, sched = run_policy(requests, policy, num_blocks=6, block_size=4, token_budget=9)
    assert outputs == {r.index: run_alone(r) for r in requests}
    assert cached[2] == 8  # B still reused A's prefix once C was done
