"""Piecewise graphs of mixed steps (engine/mixed_graphs.py), checked on the CPU: the pieces over
padded static buffers, run eagerly as a graph replay would run them, compute what the model's
own forward computes, store K/V for the real tokens only, and give a whole job the same tokens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from batchllm_cli.engine.mixed_graphs import TOKEN_BUCKETS, StepPieces, buffer_rows, token_bucket
from batchllm_kernels.metadata import AttentionMetadata
from graph_stand_ins import EagerMixed


def test_token_buckets_hold_each_count_in_the_smallest_size_up_to_the_limit():
    assert token_bucket(1, 2048) == 16 and token_bucket(16, 2048) == 16 and token_bucket(17, 2048) == 32
    assert token_bucket(1000, 2048) == 1024 and token_bucket(1025, 2048) == 1536
    assert token_bucket(2049, 2048) is None and token_bucket(100, 96) is None and token_bucket(5, 0) is None
    assert all(b / a <= 2 for a, b in zip(TOKEN_BUCKETS, TOKEN_BUCKETS[1:]))
    assert buffer_rows(2048, 8192) == 2048  # the largest step a graph may hold
    assert buffer_rows(2048, 100) == 128  # a small budget: buffers for its steps only
    assert buffer_rows(100, 8192) == 96  # a limit between buckets: the bucket below it
    assert buffer_rows(0, 8192) == 0 and buffer_rows(8, 8192) == 0  # off


@pytest.fixture(scope="module")
def tiny():
    from batchllm_cli.engine.llm import LLM

    return LLM("tiny-llama", device="cpu", token_budget=64, num_kv_blocks=40)


def _meta(q_lens, ctx, tables):
    n = len(q_lens)
    return AttentionMetadata.build(block_size=16, q_lens=q_lens, own_ctx_lens=ctx, own_block_tables=tables,
                                   shared_ids=[-1] * n, shared_lens=[], shared_block_tables=[])


def test_pieces_compute_the_models_forward_and_store_only_real_tokens(tiny):
    model = tiny.runner.model
    want_kv = [tuple(torch.zeros_like(t) for t in layer) for layer in tiny.runner.kv_caches]
    got_kv = copy.deepcopy(want_kv)
    pieces = StepPieces(model, got_kv, 64, torch.device("cpu"))
    rng = np.random.default_rng(0)
    # step 1: two prefills (13 and 7 tokens); step 2: their decodes and a third prefill; each
    # padded to its bucket (32) with rows left over from the step before
    steps = [([13, 7], [0, 0], [[1], [2]]), ([1, 1, 20], [13, 7, 0], [[1], [2], [3, 4]])]
    for q_lens, ctx, tables in steps:
        meta = _meta(q_lens, ctx, tables)
        ids = torch.from_numpy(rng.integers(5, 200, sum(q_lens)))
        pos = torch.cat([torch.arange(c, c + q) for q, c in zip(q_lens, ctx)])
        want = model(ids, pos, meta, want_kv)
        size = token_bucket(sum(q_lens), 64)
        assert size == 32
        pieces.fill(size, ids, pos, meta.slot_mapping)
        got = pieces.forward(size, meta)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for (wk, wv), (gk, gv) in zip(want_kv, got_kv):
            torch.testing.assert_close(gk, wk, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(gv, wv, rtol=1e-5, atol=1e-5)
    assert pieces.slots[22:32].tolist() == [-1] * 10  # padding rows: nothing stored
    assert all(k[0].abs().sum() == 0 and k[5:].abs().sum() == 0 for k, _ in got_kv)  # blocks no token names


def test_a_job_through_the_pieces_gives_the_eager_runs_tokens():
    from batchllm_cli.engine.llm import LLM
    from batchllm_cli.types import SamplingParams

    rng = np.random.default_rng(3)
    prefix = rng.integers(5, 200, 40).tolist()
    prompts = [prefix + rng.integers(5, 200, int(rng.integers(2, 25))).tolist() for _ in range(6)]
    prompts += [rng.integers(5, 200, int(rng.integers(3, 50))).tolist() for _ in range(4)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)

    def run(mixed: bool):
        llm = LLM("tiny-llama", device="cpu", token_budget=48, num_kv_blocks=120)
        if mixed:
            llm.runner.mixed = EagerMixed(llm.runner.model, llm.runner.kv_caches, 64)
        out = [c.token_ids for c in llm.generate(prompts, params)]
        return out, llm.runner.mixed

    eager, _ = run(False)
    pieces, stand_in = run(True)
    assert pieces == eager
    assert set(stand_in.sizes) >= {16, 64}  # decode steps and full prefill chunks both went through it
