"""Differential tests of the varlen paged prefill kernel and of the whole `triton_ops.attention`
(decodes and prefills in one step) against the reference attention."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from batchllm_kernels import reference, triton_ops
from batchllm_kernels.prefill import prefill_attention, prefill_launch
from triton_cases import Item, make_step, tolerance

BF16, FP16 = torch.bfloat16, torch.float16


def _check(items, shared_lens, *, num_kv_heads, gqa, head_dim, dtype=BF16, block_size=16, seed=0,
           whole_step=False, **launch):
    step = make_step(items, shared_lens, num_kv_heads=num_kv_heads, gqa=gqa, head_dim=head_dim,
                     block_size=block_size, dtype=dtype, seed=seed)
    scale = head_dim ** -0.5
    ref = reference.attention(step.q, step.k_cache, step.v_cache, step.meta, scale)
    if whole_step:
        out = triton_ops.attention(step.q, step.k_cache, step.v_cache, step.meta, scale)
    else:
        out = torch.full_like(step.q, float("nan"))
        prefill_attention(step.q, step.k_cache, step.v_cache, step.meta, scale, out, **launch)
        first = step.meta.num_decodes  # decode rows are the decode kernel's
        out, ref = out[first:], ref[first:]
    torch.testing.assert_close(out, ref, **tolerance(dtype))


CPU_CASES = [
    # (items, shared_lens, kv heads, gqa, head_dim, dtype, block_size)
    ([Item(70, 0)], [], 1, 1, 64, BF16, 16),  # a prefix prefill: causal, two q tiles
    ([Item(5, 0, 0), Item(9, 3, 0)], [37], 1, 2, 64, FP16, 16),  # distinct parts after a prefix
    ([Item(33, 40, 0), Item(1, 7, -1), Item(64, 64, 0)], [16], 1, 4, 64, BF16, 8),  # chunks
    ([Item(20, 5, 0)], [100], 1, 5, 128, BF16, 128),
]


@pytest.mark.parametrize("case", range(len(CPU_CASES)))
def test_prefill_small_grid(case):
    items, shared_lens, kv_heads, gqa, head_dim, dtype, block_size = CPU_CASES[case]
    _check(items, shared_lens, num_kv_heads=kv_heads, gqa=gqa, head_dim=head_dim, dtype=dtype,
           block_size=block_size)


@pytest.mark.parametrize("launch", [{"wide_offsets": True, "block_n": 32}, {"fast_tiles": False},
                                    {"wide_offsets": False, "block_m": 32, "block_n": 16},
                                    {"pack_heads": False}, {"pack_heads": False, "fast_tiles": False},
                                    {"pack_heads": True, "fast_tiles": False}])
def test_prefill_launch_variants(launch):
    """Unmasked whole tiles and int32 offsets (the defaults on small caches) against their
    alternatives: masks on every tile, int64 offsets, one query head per tile."""
    items = [Item(70, 0), Item(40, 0, 0), Item(33, 50, 0)]
    _check(items, [100], num_kv_heads=2, gqa=2, head_dim=64, **launch)


@pytest.mark.parametrize("gqa,block_m", [(4, 32), (8, 64), (3, 32)])
def test_prefill_packed_heads(gqa, block_m):
    """Packed tiles of block_m // gqa tokens: chunks after a prefix, a causal diagonal that falls
    inside one tile, and a ratio that is not a power of two (falls back to one head per tile)."""
    items = [Item(19, 0), Item(6, 0, 0), Item(13, 21, 0), Item(1, 9, -1)]
    _check(items, [45], num_kv_heads=1, gqa=gqa, head_dim=64, block_m=block_m, block_n=16,
           pack_heads=True)


def test_prefill_launch_by_head_dim():
    """The measured choice: packed heads everywhere, 128x128 tiles of 8 warps above head_dim 64."""
    small, large = prefill_launch(64), prefill_launch(128)
    assert small.pack_heads and large.pack_heads
    assert (small.block_m, small.block_n, small.num_warps) == (64, 64, 4)
    assert (large.block_m, large.block_n, large.num_warps) == (128, 128, 8)
    # the 8B shape's GQA ratio (4) divides both tile heights, so both pack
    assert small.block_m % 4 == 0 and large.block_m % 4 == 0


def test_mixed_step_decodes_then_prefills():
    items = [Item(1, 5, 0), Item(1, 9, 0), Item(1, 0, -1), Item(40, 0, -1), Item(7, 3, 0)]
    _check(items, [37], num_kv_heads=2, gqa=2, head_dim=64, whole_step=True)


def test_step_without_shared_segments():
    _check([Item(1, 4), Item(12, 0)], [], num_kv_heads=1, gqa=2, head_dim=64, whole_step=True)


def _gpu_grid():
    rng = random.Random(11)
    cases = []
    for i, (gqa, head_dim) in enumerate(itertools.product([1, 4, 5, 8, 16], [64, 128])):
        dtype = (BF16, FP16)[(i + gqa) % 2]
        kv_heads = 2
        items = [Item(rng.randrange(1, 600), 0),  # prefix prefill
                 Item(rng.randrange(1, 300), 0, 0), Item(rng.randrange(1, 300), 0, 0),
                 Item(rng.randrange(1, 200), rng.randrange(1, 500), 1),  # a later chunk
                 Item(rng.randrange(2, 50), rng.randrange(0, 100))]
        cases.append((items, [2049, 1], kv_heads, gqa, head_dim, dtype, 16))
    cases.append(([Item(2048, 0), Item(200, 0, 0)], [16000], 8, 4, 128, BF16, 16))
    cases.append(([Item(1000, 7000)], [], 8, 4, 128, FP16, 32))
    return cases


GPU_CASES = _gpu_grid()


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_prefill_full_grid(case):
    items, shared_lens, kv_heads, gqa, head_dim, dtype, block_size = GPU_CASES[case]
    _check(items, shared_lens, num_kv_heads=kv_heads, gqa=gqa, head_dim=head_dim, dtype=dtype,
           block_size=block_size, seed=case)


@pytest.mark.gpu
def test_mixed_step_on_gpu():
    rng = random.Random(3)
    items = [Item(1, rng.randrange(0, 300), 0) for _ in range(48)]
    items += [Item(1, rng.randrange(0, 3000), -1) for _ in range(5)]
    items += [Item(1, rng.randrange(0, 300), 1) for _ in range(7)]
    items += [Item(512, 0, -1), Item(180, 0, 1), Item(300, 900, -1)]
    _check(items, [2000, 16000], num_kv_heads=8, gqa=4, head_dim=128, whole_step=True)
