"""Scheduler: token budget, decodes first, FIFO admission, memory bound, prefix lifetime.

A fake model (no torch) keeps one token id per KV slot, writes every item's tokens through its
block table, then reads back each sampling item's whole context (shared prefix + own blocks)
and derives the next token from it. Any wrong block table, position, chunk boundary or early
free changes the outputs, which must equal running each prompt alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.scheduler import Scheduler
from batchllm_cli.engine.simulate import simulate
from batchllm_cli.engine.stop import StopChecker
from batchllm_cli.errors import CapacityError
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import Request, SamplingParams

VOCAB = 50
EOS = 3


def next_token(context: list[int]) -> int:
    return (sum((i + 1) * t for i, t in enumerate(context)) * 31 + len(context)) % VOCAB


stop_on_eos = StopChecker(None, [EOS])


def run_alone(request: Request) -> list[int]:
    seq = request.prompt_ids.tolist()
    out: list[int] = []
    while True:
        out.append(next_token(seq))
        if out[-1] == EOS or len(out) == request.sampling.max_tokens:
            return out
        seq.append(out[-1])


class FakeModel:
    """A token-id "KV cache" addressed exactly as the kernels address the real one.

    Every item's whole context (shared segment + own blocks up to its last new token) must read
    back as the true token sequence, else a block table, position or lifetime is wrong.
    """

    def __init__(self, num_blocks: int, block_size: int, requests, groups) -> None:
        self.block_size = block_size
        self.slots = np.full(num_blocks * block_size, -1, dtype=np.int64)
        self.seqs = {r.index: r.prompt_ids.tolist() for r in requests}
        self.prefixes = [requests[g.members[0]].prompt_ids[: g.prefix_len].tolist() for g in groups]

    def _slot(self, table, pos):
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def run(self, batch) -> list[int]:
        for item in batch.items:  # store_kv for every item first, as each layer does
            for j, tok in enumerate(item.token_ids.tolist()):
                self.slots[self._slot(item.own_block_table, item.own_ctx_len + j)] = tok
        sampled = []
        for item in batch.items:
            context = []
            if item.shared_id >= 0:
                seg = batch.shared[item.shared_id]
                context += [int(self.slots[self._slot(seg.block_table, p)]) for p in range(seg.length)]
            own_len = item.own_ctx_len + item.q_len
            context += [int(self.slots[self._slot(item.own_block_table, p)]) for p in range(own_len)]
            assert len(context) == item.start_pos + item.q_len
            truth = self.prefixes[item.group] if item.kind == "prefix" else self.seqs[item.request]
            assert context == truth[: len(context)], f"step {batch.step}: wrong context"
            if item.samples:
                sampled.append(next_token(context))
                self.seqs[item.request].append(sampled[-1])
        return sampled


def make_workload(seed: int, num_groups: int = 6, singles: int = 4):
    """Requests with shared prefixes and a plan of their groups (shuffled order)."""
    rng = np.random.default_rng(seed)
    prompts, groups = [], []
    for _ in range(num_groups):
        prefix = rng.integers(0, VOCAB, int(rng.integers(5, 60)))
        members = []
        for _ in range(int(rng.integers(2, 6))):
            members.append(len(prompts))
            prompts.append(np.concatenate([prefix, rng.integers(0, VOCAB, int(rng.integers(1, 40)))]))
        groups.append(PrefixGroup(len(prefix), tuple(members)))
    for _ in range(singles):
        groups.append(PrefixGroup(0, (len(prompts),)))
        prompts.append(rng.integers(0, VOCAB, int(rng.integers(1, 70))))
    requests = [
        Request(i, f"r{i}", p.astype(np.int32), SamplingParams(max_tokens=int(rng.integers(1, 14))))
        for i, p in enumerate(prompts)
    ]
    order = rng.permutation(len(groups))
    return requests, [groups[i] for i in order]


def run_checked(requests, groups, *, num_blocks, block_size, token_budget, memory_bound):
    """Runs the plan on the fake model, checking the scheduler's invariants at every step."""
    pool = BlockPool(num_blocks)
    sched = Scheduler(requests, groups, pool, block_size=block_size, token_budget=token_budget,
                      memory_bound=memory_bound)
    model = FakeModel(num_blocks, block_size, requests, groups)
    outputs, first_step, finish_step = {}, {}, {}
    while sched.has_work:
        decoding = set(sched.columns.decoding.tolist())
        batch = sched.schedule()
        assert batch.items, "no progress"
        assert batch.num_tokens <= token_budget
        # decodes first: every running decode is in the step when they fit the budget
        decoded = {it.request for it in batch.items if it.kind == "decode"}
        assert decoded == decoding if len(decoding) <= token_budget else len(decoded) == token_budget
        # kernel order: the decodes first, contiguous per shared id, then the chunks
        kinds = [it.kind == "decode" for it in batch.items]
        assert kinds == sorted(kinds, reverse=True)
        sids = batch.decodes.shared_ids.tolist()
        assert sids == sorted(sids)
        assert pool.num_used <= sched.block_limit
        for it in batch.items:
            if it.request >= 0:
                first_step.setdefault(it.request, batch.step)
        finished = sched.update(batch, model.run(batch), stop_on_eos)
        for s in finished:
            outputs[s.index] = s.output_ids
            finish_step[s.index] = batch.step
        pool.check_integrity(sched.live_block_lists())
    assert pool.num_used == 0
    return outputs, first_step, pool, sched


@pytest.mark.parametrize(
    "seed,block_size,token_budget,num_blocks",
    [(0, 4, 16, 400), (1, 16, 64, 200), (2, 4, 7, 60), (3, 8, 33, 40), (4, 1, 24, 300)],
)
def test_outputs_equal_running_each_prompt_alone(seed, block_size, token_budget, num_blocks):
    requests, groups = make_workload(seed)
    outputs, _, pool, _ = run_checked(requests, groups, num_blocks=num_blocks, block_size=block_size,
                                      token_budget=token_budget, memory_bound=0.9)
    assert outputs == {r.index: run_alone(r) for r in requests}
    assert pool.peak_used <= int(0.9 * num_blocks)


def test_admission_follows_plan_order_under_memory_pressure():
    requests, groups = make_workload(5, num_groups=8)
    _, first_step, pool, sched = run_checked(requests, groups, num_blocks=40, block_size=4,
                                             token_budget=32, memory_bound=0.8)
    order = [m for g in groups for m in g.members]
    starts = [first_step[m] for m in order]
    assert starts == sorted(starts)  # FIFO: nobody is overtaken, so nobody starves
    assert pool.peak_used <= sched.block_limit == 32
    assert pool.peak_used >= 20  # the bound, not a request count, limited admission


def test_prompt_longer_than_the_budget_is_prefilled_in_chunks():
    prompt = np.arange(100, dtype=np.int32) % VOCAB
    req = Request(0, "long", prompt, SamplingParams(max_tokens=3))
    pool = BlockPool(64)
    sched = Scheduler([req], [PrefixGroup(0, (0,))], pool, block_size=4, token_budget=16, memory_bound=1.0)
    model = FakeModel(64, 4, [req], [PrefixGroup(0, (0,))])
    chunks = []
    while sched.has_work:
        batch = sched.schedule()
        chunks += [(it.start_pos, it.q_len, it.samples) for it in batch.items if it.kind == "prefill"]
        sched.update(batch, model.run(batch))
    assert [c[1] for c in chunks] == [16] * 6 + [4]
    assert [c[0] for c in chunks] == list(range(0, 100, 16))
    assert [c[2] for c in chunks] == [False] * 6 + [True]


def test_prefix_is_computed_once_and_freed_after_the_last_member():
    rng = np.random.default_rng(7)
    prefix = rng.integers(0, VOCAB, 20)
    prompts = [np.concatenate([prefix, rng.integers(0, VOCAB, n)]).astype(np.int32) for n in (3, 5, 9)]
    requests = [Request(i, str(i), p, SamplingParams(max_tokens=m)) for i, (p, m) in enumerate(zip(prompts, (2, 9, 5)))]
    pool = BlockPool(50)
    sched = Scheduler(requests, [PrefixGroup(20, (0, 1, 2))], pool, block_size=4, token_budget=64, memory_bound=1.0)
    model = FakeModel(50, 4, requests, [PrefixGroup(20, (0, 1, 2))])
    prefix_tokens, prefix_blocks, alive = 0, None, 3
    while sched.has_work:
        batch = sched.schedule()
        prefix_tokens += sum(it.q_len for it in batch.items if it.kind == "prefix")
        prefix_blocks = prefix_blocks or list(sched.groups[0].prefix_blocks)
        finished = sched.update(batch, model.run(batch), stop_on_eos)
        alive -= len(finished)
        counts = {pool.ref_count(b) for b in prefix_blocks}
        assert counts == ({1} if alive else {0})
    assert prefix_tokens == 20
    assert sorted(prefix_blocks) == sorted(set(prefix_blocks)) and len(prefix_blocks) == 5


def test_more_decodes_than_budget_take_turns():
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    requests = [Request(i, str(i), np.array([i % VOCAB, 1], dtype=np.int32), params) for i in range(10)]
    groups = [PrefixGroup(0, (i,)) for i in range(10)]
    outputs, _, _, _ = run_checked(requests, groups, num_blocks=100, block_size=2, token_budget=4, memory_bound=1.0)
    assert {i: len(o) for i, o in outputs.items()} == {i: 6 for i in range(10)}


def test_a_request_that_can_never_fit_is_refused_up_front():
    req = Request(0, "big", np.zeros(50, dtype=np.int32), SamplingParams(max_tokens=31))
    with pytest.raises(CapacityError, match=r"'big' needs 20 KV blocks .* at most 19 of the pool's 20"):
        Scheduler([req], [PrefixGroup(0, (0,))], BlockPool(20), block_size=4, token_budget=8, memory_bound=0.95)


def test_simulate_counts_every_token_once():
    requests, groups = make_workload(11)
    result = simulate(requests, groups, num_blocks=120, block_size=4, token_budget=32, memory_bound=0.9)
    prefill = sum(g.prefix_len + sum(requests[m].prompt_len - g.prefix_len for m in g.members) for g in groups)
    assert result.prefill_tokens == prefill
    assert result.decode_tokens == sum(r.sampling.max_tokens - 1 for r in requests)
    assert sum(result.tokens_per_step) == prefill + result.decode_tokens
    assert max(result.tokens_per_step) <= 32 and result.steps == len(result.tokens_per_step)
    assert 0 < result.peak_blocks <= int(0.9 * 120)
    # the dry run is the real schedule when every request runs to max_tokens
    always_long = [
        Request(r.index, r.id, r.prompt_ids, SamplingParams(max_tokens=r.sampling.max_tokens, ignore_eos=True))
        for r in requests
    ]
    pool = BlockPool(120)
    sched = Scheduler(always_long, groups, pool, block_size=4, token_budget=32, memory_bound=0.9)
    model, steps = FakeModel(120, 4, always_long, groups), []
    while sched.has_work:
        batch = sched.schedule()
        steps.append(batch.num_tokens)
        sched.update(batch, model.run(batch))
    assert tuple(steps) == result.tokens_per_step and pool.peak_used == result.peak_blocks


def _industry(num_requests: int):
    from batchllm_cli.bench.workloads import generate, load_spec
    from batchllm_cli.planner import PlanSettings, build_plan

    workload = generate(load_spec("industry").scaled(num_requests))
    params = SamplingParams(max_tokens=workload.spec.output_len, ignore_eos=True)
    requests = [Request(i, str(i), np.asarray(p, dtype=np.int32), params) for i, p in enumerate(workload.prompts)]
    return requests, build_plan(requests, PlanSettings(num_kv_blocks=100_000)).groups


@pytest.mark.parametrize("token_budget", [2048, 8192])
def test_every_step_is_full_until_the_last_prefill(token_budget):
    # The group walk admits as many groups per step as the budget takes (industry shape: groups of
    # ~3 with ~1,570-token prefixes and ~30-token own parts): no step leaves budget unused while
    # prompt tokens wait, so the step count is the token count over the budget plus the drain.
    requests, groups = _industry(300)
    result = simulate(requests, groups, num_blocks=100_000, block_size=16, token_budget=token_budget, memory_bound=0.95)
    steps = result.tokens_per_step
    pool = BlockPool(100_000)
    sched = Scheduler(requests, groups, pool, block_size=16, token_budget=token_budget, memory_bound=0.95)
    last_prefill = 0
    while sched.has_work:
        batch = sched.schedule()
        if batch.num_prefill_tokens:
            last_prefill = batch.step
        sched.update(batch, [0] * batch.num_samples)
    assert all(n == token_budget for n in steps[:last_prefill])
    output_len = requests[0].sampling.max_tokens
    total = result.prefill_tokens + result.decode_tokens
    assert len(steps) <= -(-total // token_budget) + output_len


def test_members_start_in_the_step_of_their_prefix_last_chunk():
    requests, groups = _industry(60)
    pool = BlockPool(100_000)
    sched = Scheduler(requests, groups, pool, block_size=16, token_budget=4096, memory_bound=0.95)
    model = FakeModel(100_000, 16, requests, groups)  # checks every context read back
    prefix_done_at, first_member_at = {}, {}
    done = {g: 0 for g in range(len(groups))}
    while sched.has_work:
        batch = sched.schedule()
        for it in batch.items:
            if it.kind == "prefix":
                done[it.group] += it.q_len
                if done[it.group] == groups[it.group].prefix_len:
                    prefix_done_at[it.group] = batch.step
            elif it.kind == "prefill":
                first_member_at.setdefault(it.group, batch.step)
        sched.update(batch, model.run(batch))
    shared = [g for g, grp in enumerate(groups) if grp.prefix_len > 0]
    assert shared and len(prefix_done_at) == len(shared)
    # the first member runs with the prefix's last chunk whenever the budget had room for it
    same = sum(first_member_at[g] == prefix_done_at[g] for g in shared)
    assert same >= 0.9 * len(shared)
    assert all(first_member_at[g] >= prefix_done_at[g] for g in shared)


def test_a_group_too_big_to_reserve_whole_streams_its_members():
    rng = np.random.default_rng(3)
    prefix = rng.integers(0, VOCAB, 12)
    prompts = [np.concatenate([prefix, rng.integers(0, VOCAB, 6)]).astype(np.int32) for _ in range(12)]
    prompts += [rng.integers(0, VOCAB, 9).astype(np.int32) for _ in range(3)]
    requests = [Request(i, str(i), p, SamplingParams(max_tokens=5)) for i, p in enumerate(prompts)]
    groups = [PrefixGroup(0, (12,)), PrefixGroup(12, tuple(range(12))), PrefixGroup(0, (13,)), PrefixGroup(0, (14,))]
    # the big group needs 3 + 12 * 3 = 39 blocks of 4 tokens whole; only 20 may be reserved
    outputs, first_step, pool, sched = run_checked(requests, groups, num_blocks=20, block_size=4,
                                                   token_budget=16, memory_bound=1.0)
    assert outputs == {r.index: run_alone(r) for r in requests}
    order = [m for g in groups for m in g.members]
    assert [first_step[m] for m in order] == sorted(first_step[m] for m in order)  # FIFO kept


def test_max_running_caps_admission_but_not_the_answers():
    requests, groups = make_workload(8, num_groups=10, singles=6)
    pool = BlockPool(400)
    sched = Scheduler(requests, groups, pool, block_size=4, token_budget=64, memory_bound=1.0, max_running=5)
    model = FakeModel(400, 4, requests, groups)
    outputs, peak = {}, 0
    while sched.has_work:
        batch = sched.schedule()
        peak = max(peak, sched.num_admitted)
        for s in sched.update(batch, model.run(batch), stop_on_eos):
            outputs[s.index] = s.output_ids
    biggest = max(len(g.members) for g in groups)
    assert 5 <= peak < 5 + biggest  # a group goes in whole: the cap is passed by less than one group
    assert outputs == {r.index: run_alone(r) for r in requests}
