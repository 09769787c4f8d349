"""On a GPU: piecewise CUDA graphs of mixed steps (engine/mixed_graphs.py) replay what the
model's eager forward computes, step after step on the same static buffers, with K/V stored
for the real tokens only. The CPU twin (tests/unit/test_mixed_graphs.py) checks the pieces
themselves; this checks their capture and replay."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _near(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to bf16 rounding on average: the pieces multiply a padded token count, for which
    cuBLAS picks other kernels than the eager forward does for the real one (H200, 16 layers:
    typical differences of 0.01-0.04, a few up to 0.1). A wrong row or slot is off everywhere."""
    diff = (got.float() - want.float()).abs()
    assert float(diff.mean()) <= 0.02 * float(want.float().abs().mean()) + 1e-3


def test_replayed_pieces_match_the_eager_forward():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from batchllm_cli.bench.model import bench_source
    from batchllm_cli.engine.mixed_graphs import MixedGraphs, StepPieces, token_bucket
    from batchllm_cli.models.kv_cache import allocate_kv_cache
    from batchllm_cli.models.loader import load_model
    from batchllm_kernels import get_ops
    from batchllm_kernels.metadata import AttentionMetadata

    dev = torch.device("cuda:0")
    source = bench_source("llama-3.2-1b")
    model = load_model(source, "bfloat16", "cuda:0", get_ops(dev))
    eager_kv = allocate_kv_cache(model.config, 64, 16, "bfloat16", dev)
    graph_kv = allocate_kv_cache(model.config, 64, 16, "bfloat16", dev)
    pieces_kv = allocate_kv_cache(model.config, 64, 16, "bfloat16", dev)
    graphs = MixedGraphs(StepPieces(model, graph_kv, 512, dev), 512, dev, torch.cuda.graph_pool_handle())
    pieces = StepPieces(model, pieces_kv, 512, dev)  # the same pieces, run eagerly
    gen = torch.Generator().manual_seed(0)
    # prefills of 200 and 57 tokens; then their decodes with a prefill chunk of 90 and a short one
    steps = [([200, 57], [0, 0], [list(range(1, 14)), [20, 21, 22, 23]]),
             ([1, 1, 90, 5], [200, 57, 0, 0], [list(range(1, 14)), [20, 21, 22, 23], [30, 31, 32, 33, 34, 35], [40]])]
    with torch.inference_mode():
        for q_lens, ctx, tables in steps:
            n = len(q_lens)
            meta = AttentionMetadata.build(block_size=16, q_lens=q_lens, own_ctx_lens=ctx, own_block_tables=tables,
                                           shared_ids=[-1] * n, shared_lens=[], shared_block_tables=[], device=dev)
            ids = torch.randint(100, model.config.vocab_size - 100, (sum(q_lens),), generator=gen).to(dev)
            pos = torch.cat([torch.arange(c, c + q) for q, c in zip(q_lens, ctx)]).to(dev)
            size = token_bucket(sum(q_lens), 512)
            want = model(ids, pos, meta, eager_kv)
            got = graphs.run(size, ids, pos, meta).clone()
            pieces.fill(size, ids, pos, meta.slot_mapping)
            eager = pieces.forward(size, meta)
            assert got.shape == want.shape == eager.shape
            # a replay runs the kernels the eager pieces run, on the same shapes: the same values
            torch.testing.assert_close(got, eager, rtol=1.6e-2, atol=1e-5)
            _near(got, want)
            for (wk, wv), (gk, gv), (pk, pv) in zip(eager_kv, graph_kv, pieces_kv):
                torch.testing.assert_close(gk, pk, rtol=1.6e-2, atol=1e-5)
                torch.testing.assert_close(gv, pv, rtol=1.6e-2, atol=1e-5)
                _near(gk, wk)
                _near(gv, wv)
        assert graphs.captures == 2 and graphs.replays == 2  # 384 and 128 tokens
        assert all(float(k[0].abs().sum()) == 0 for k, _ in graph_kv)  # no padding token stored in block 0
