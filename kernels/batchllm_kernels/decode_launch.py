"""Host-side launch choices of the prefix-shared decode attention (no kernels here).

From host values only (no device sync, so a step can sit in a CUDA graph): the tile height, the
number of tiles and of key-range splits, keys per tile, and whether the decodes' own segments
run in their tile or apart. Each rule was chosen from H100 measurements
(benchmarks/tune_decode.py, raw lines in benchmarks/results/tune_decode_h100_run*.jsonl).
"""

from __future__ import annotations

import math

import torch

from batchllm_kernels.triton_util import next_pow2, num_sms


def own_segments_apart(block_m: int, gqa_ratio: int) -> bool:
    """Whether the decodes' own segments run in own_decode_kernel instead of in their tile.

    A tile walking its decodes' own segments multiplies block_m / max(16, gqa) times the rows
    that count (16: tl.dot's minimum); own_decode_kernel takes each decode's GQA rows alone, as
    one more partial state, on a side stream beside the prefix launch. On an H100 that paid at
    8x (4x64, P=2000: 192 -> 159 us, then 115 us with the overlap) and lost at 4x (16x16)."""
    return block_m // max(16, next_pow2(gqa_ratio)) >= 8


def decode_launch_shape(num_decodes: int, num_groups: int, gqa_ratio: int, num_kv_heads: int,
                        max_kv_len: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, tile slots, splits) for a step, from host values only (no device sync).

    BLOCK_M fits the average group's query rows (decodes x GQA ratio). The KV range is split
    (split-K) only when the tiles leave part of the GPU idle: then into as many splits as fill
    one wave. Long ranges with few waves are split too, to shorten the tail of the last wave.
    Where own segments run apart, their launch fills the GPU beside the prefix tiles, and a
    short range is not split. Measured on an H100 (benchmarks/tune_decode.py): a second wave or
    a split that was not needed costs more than the partial results' traffic.
    """
    avg_rows = math.ceil(num_decodes * gqa_ratio / max(1, num_groups))
    block_m = min(max(next_pow2(avg_rows), 16, next_pow2(gqa_ratio)), max(128, next_pow2(gqa_ratio)))
    items = block_m // gqa_ratio
    # Tiles: a group of n decodes takes cdiv(n, items) tiles; this bounds their sum.
    slots = max(1, min(num_decodes, num_groups + num_decodes // items))
    busy = max(num_groups, math.ceil(num_decodes / items)) * num_kv_heads
    # Programs resident per multiprocessor (registers, shared memory at head_dim 128): 3 at
    # BLOCK_M 16, 2 up to 64 (4 warps), 1 at 128 (8 warps). Filling exactly one wave measured
    # best: 16 groups x 16 decodes, P=2000, S=200 took 219 us unsplit and 147 us in 2 splits.
    resident = num_sms(device) * (3 if block_m <= 16 else 2 if block_m <= 64 else 1)
    if max_kv_len < 8192 and own_segments_apart(block_m, gqa_ratio):
        splits = 1  # 4x64, P=2000: 130 us in 2 splits, 115 us in one
    elif busy < resident:
        splits = resident // busy
    elif max_kv_len >= 8192 and busy < 3 * resident:
        splits = math.ceil(3 * resident / busy)
    else:
        splits = 1
    return block_m, slots, max(1, min(splits, max_kv_len // 512))


def decode_block_n(block_m: int, splits: int, max_kv_len: int) -> int:
    """Keys per tile, as measured best on an H100 (benchmarks/results/tune_decode_h100_run3.jsonl):
    128 for 16-row tiles over short ranges (256x1: 800 -> 762 us, 64x4: 301 -> 259 us) and for
    128-row tiles with few splits (4x64, 1x256: 460 -> 434 us); 64 for 32- and 64-row tiles
    (16x16: 147 vs 180 us), for 16-row tiles over long ranges and for many short splits (1x64)."""
    if block_m <= 16:
        return 128 if max_kv_len < 8192 else 64
    if block_m >= 128:
        return 128 if splits < 4 else 64
    return 64
