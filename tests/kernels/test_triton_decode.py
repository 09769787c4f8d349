"""Differential tests of the prefix-shared decode kernel against the reference attention.

CPU (Triton interpreter): a small grid. GPU: the full grid of issue 7 (group sizes 1..64,
prefix lengths 0..16k incl. non-multiples of the block size, GQA ratios 1..16, head dims 64 and
128, bf16 and fp16), both merge modes, repeated launches (races) and CUDA graph replay.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from batchllm_kernels import reference
from batchllm_kernels.decode_launch import decode_launch_shape
from batchllm_kernels.prefix_decode import prefix_decode_attention
from triton_cases import decode_items, make_step, tolerance

BF16, FP16 = torch.bfloat16, torch.float16


def _check(groups, *, num_kv_heads, gqa, head_dim, dtype=BF16, block_size=16, seed=0, **launch):
    items, shared_lens = decode_items(groups)
    step = make_step(items, shared_lens, num_kv_heads=num_kv_heads, gqa=gqa, head_dim=head_dim,
                     block_size=block_size, dtype=dtype, seed=seed)
    scale = head_dim ** -0.5
    ref = reference.attention(step.q, step.k_cache, step.v_cache, step.meta, scale)
    out = torch.full_like(step.q, float("nan"))
    prefix_decode_attention(step.q, step.k_cache, step.v_cache, step.meta, scale, out, **launch)
    torch.testing.assert_close(out, ref, **tolerance(dtype))
    return step, out


# (groups [(shared_len, own context lengths)], kv heads, gqa, head_dim, dtype, block_size, launch)
CPU_CASES = [
    ([(0, [0])], 1, 1, 64, BF16, 16, {}),  # one decode, no prefix, MHA
    ([(5, [2])], 1, 4, 64, FP16, 16, {}),  # group of one, prefix shorter than a block
    ([(37, [3, 20, 0]), (0, [5]), (16, [1] * 6)], 2, 4, 64, BF16, 16, {}),
    ([(37, list(range(17)))], 1, 4, 64, BF16, 16, {"block_m": 16, "num_splits": 3}),  # tiles x splits
    ([(37, list(range(17)))], 1, 4, 64, FP16, 16,
     {"block_m": 16, "num_splits": 3, "merge_in_launch": True}),
    ([(40, [1, 9, 30]), (0, [70]), (64, [0] * 5)], 1, 5, 64, FP16, 16, {"num_splits": 2}),
    ([(33, [4, 2, 7])], 1, 7, 64, BF16, 32, {}),
    ([(20, [3, 8, 1, 0])], 1, 16, 64, BF16, 16, {"num_splits": 2, "merge_in_launch": False}),
    ([(70, [5, 50])], 2, 2, 128, FP16, 128, {"num_splits": 4, "merge_in_launch": True}),  # block > BLOCK_N
    ([(19, [2] * 64)], 1, 1, 64, BF16, 8, {}),  # group of 64
    ([(0, [30]), (0, [2]), (0, [99])], 2, 8, 64, BF16, 16, {"num_splits": 3}),  # plain decodes only
    # tall tiles: own segments in their own programs (the default there), or walked by the tile
    ([(37, list(range(17))), (0, [12])], 1, 4, 64, BF16, 16, {"block_m": 64, "num_splits": 2}),
    ([(37, list(range(17)))], 1, 4, 64, BF16, 16, {"block_m": 64, "separate_own": False}),
    ([(21, [3, 40, 0, 8])], 2, 2, 64, FP16, 16, {"block_m": 32, "separate_own": True}),
    # the other grid order (tiles fastest), and several heads per merge program
    ([(37, [3, 20, 0]), (0, [5])], 2, 4, 64, BF16, 16, {"heads_first": False, "num_splits": 2}),
    ([(37, list(range(17)))], 3, 2, 64, FP16, 16,
     {"block_m": 64, "heads_first": False, "merge_heads": 4, "block_n": 32}),
    # whole prefix and own tiles on the unmasked path (then a partial one), int64 and int32 offsets
    ([(100, [3, 70, 1]), (64, [31])], 1, 4, 64, BF16, 16, {"block_n": 32, "wide_offsets": True}),
    ([(100, [3, 70, 1]), (64, [31])], 1, 4, 64, BF16, 16,
     {"block_n": 16, "separate_own": True, "wide_offsets": False, "num_splits": 2}),
    ([(100, [3, 70, 1])], 1, 4, 64, FP16, 16, {"block_n": 32, "fast_tiles": False}),
]


@pytest.mark.parametrize("case", range(len(CPU_CASES)))
def test_decode_small_grid(case):
    groups, kv_heads, gqa, head_dim, dtype, block_size, launch = CPU_CASES[case]
    _check(groups, num_kv_heads=kv_heads, gqa=gqa, head_dim=head_dim, dtype=dtype,
           block_size=block_size, **launch)


def _gpu_grid():
    """One step per (GQA ratio, head dim): groups of sizes 1..64 and prefixes 0..16k; the dtype
    alternates (each compiled variant costs GPU time, and dtype only changes the loads)."""
    rng = random.Random(7)
    cases = []
    combos = itertools.product([1, 2, 4, 5, 7, 8, 16], [64, 128])
    for i, (gqa, head_dim) in enumerate(combos):
        dtype = (BF16, FP16)[i % 2 ^ (gqa % 2)]
        kv_heads = max(1, 32 // gqa // 2) if gqa > 1 else 4
        groups = [(0, [rng.randrange(1, 300)]), (1, [rng.randrange(0, 40)]),
                  (17, [rng.randrange(0, 40) for _ in range(4)]),
                  (1000, [rng.randrange(0, 250) for _ in range(16)]),
                  (2049, [rng.randrange(0, 250) for _ in range(64)])]
        cases.append((groups, kv_heads, gqa, head_dim, dtype, 16, {}))
    for size, prefix in [(64, 16000), (16, 16000), (1, 16000), (4, 4097)]:
        groups = [(prefix, [rng.randrange(0, 300) for _ in range(size)])] * 2
        cases.append((groups, 8, 4, 128, BF16, 16, {}))
    cases.append(([(0, [32000])], 8, 4, 128, BF16, 16, {}))  # one long plain decode: split-K
    cases.append(([(2000, [200] * 16)] * 16, 8, 4, 128, BF16, 16, {"num_splits": 5}))
    cases.append(([(2000, [200] * 16)] * 16, 8, 4, 128, BF16, 16,
                  {"num_splits": 5, "merge_in_launch": True}))
    return cases


GPU_CASES = _gpu_grid()


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_decode_full_grid(case):
    groups, kv_heads, gqa, head_dim, dtype, block_size, launch = GPU_CASES[case]
    _check(groups, num_kv_heads=kv_heads, gqa=gqa, head_dim=head_dim, dtype=dtype,
           block_size=block_size, seed=case, **launch)


@pytest.mark.gpu
@pytest.mark.parametrize("merge_in_launch", [True, False])
def test_split_merge_is_stable_over_repeated_launches(merge_in_launch):
    """The in-launch merge relies on an atomic counter: any ordering race shows up as a diff."""
    groups = [(3000, [100] * 8)] * 4
    step, first = _check(groups, num_kv_heads=8, gqa=4, head_dim=128, num_splits=16,
                         merge_in_launch=merge_in_launch)
    for _ in range(50):
        out = torch.full_like(step.q, float("nan"))
        prefix_decode_attention(step.q, step.k_cache, step.v_cache, step.meta, 128 ** -0.5, out,
                                num_splits=16, merge_in_launch=merge_in_launch)
        assert torch.equal(out, first)


# (groups, tokens cut from every own context before the replay, launch settings)
GRAPH_CASES = [
    ([(500, [40, 7, 90]), (0, [300]), (33, [5] * 6)], 3, {"num_splits": 3}),  # split-K, merge launch
    # tall tiles: the own-segment launch on a side stream, forked and joined inside the graph
    ([(2000, [190 + i % 20 for i in range(64)])] * 3, 50, {"overlap_own": True}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(GRAPH_CASES)))
def test_decode_replays_in_a_cuda_graph(case):
    """No host sync in the launch: a captured graph gives right results for new metadata values."""
    groups, cut, launch = GRAPH_CASES[case]
    items, shared_lens = decode_items(groups)
    step = make_step(items, shared_lens, num_kv_heads=8, gqa=4, head_dim=128)
    scale = 128 ** -0.5
    out = torch.empty_like(step.q)
    prefix_decode_attention(step.q, step.k_cache, step.v_cache, step.meta, scale, out, **launch)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        prefix_decode_attention(step.q, step.k_cache, step.v_cache, step.meta, scale, out, **launch)
    # New contents, same shapes: shorter own contexts and fresh queries.
    step.meta.own_ctx_lens.copy_(torch.clamp(step.meta.own_ctx_lens - cut, min=0))
    step.q.copy_(torch.randn_like(step.q))
    graph.replay()
    torch.cuda.synchronize()
    ref = reference.attention(step.q, step.k_cache, step.v_cache, step.meta, scale)
    torch.testing.assert_close(out, ref, **tolerance(BF16))


def test_launch_shape_splits_only_when_tiles_leave_sms_idle():
    cpu = torch.device("cpu")  # 4 stand-in multiprocessors
    block_m, slots, splits = decode_launch_shape(256, 16, 4, 8, 2200, cpu)
    assert (block_m, splits) == (64, 1) and slots >= 16
    block_m, slots, splits = decode_launch_shape(1, 1, 4, 1, 32000, cpu)
    assert block_m == 16 and splits == 12  # one wave: 3 resident programs x 4 multiprocessors
    assert decode_launch_shape(1, 1, 4, 1, 300, cpu)[2] == 1  # too short to split
    # Tall tiles whose own segments run apart: short ranges stay whole, long ones are split.
    assert decode_launch_shape(64, 1, 4, 1, 2200, cpu)[:3:2] == (128, 1)  # 2 splits would fill the GPU
    assert decode_launch_shape(64, 1, 4, 1, 16200, cpu)[2] > 1
    # Many tiles but a long range and less than 3 waves: split to shorten the tail.
    assert decode_launch_shape(8, 8, 4, 2, 16000, cpu)[2] == 3
    assert decode_launch_shape(8, 8, 16, 2, 100, cpu)[0] == 16  # block_m >= gqa ratio


def test_in_launch_merge_leaves_its_counters_at_zero():
    """Each tile's last split resets its arrival counter, so the next launch (or graph replay) starts clean."""
    from batchllm_kernels import prefix_decode

    step, _ = _check([(37, list(range(17)))], num_kv_heads=2, gqa=4, head_dim=64,
                     block_m=16, num_splits=3, merge_in_launch=True)
    counters = prefix_decode._counters[step.q.device]
    assert int(counters.abs().sum()) == 0


def test_wide_offsets_only_when_an_offset_can_pass_int32():
    from batchllm_kernels.triton_util import needs_wide_offsets

    small = torch.empty((4, 16, 8, 128), dtype=torch.bfloat16)
    assert not needs_wide_offsets(small)
    # 2**17 blocks of 16 x 8 x 128 elements: the last offset is 2**31 - 1 (no memory on "meta")
    big = torch.empty((2**17, 16, 8, 128), dtype=torch.bfloat16, device="meta")
    assert needs_wide_offsets(big)
    assert not needs_wide_offsets(big[: 2**17 - 1])
