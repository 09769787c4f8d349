"""The runner's decode-graph path, end to end on the CPU: decode-only steps go through
DecodeGraphs.run (its padded static buffers, the block-table rows gathered into them, the fed
tokens written over the input ids) and run eagerly on those buffers, which is what a graph
replay computes; a whole job must give the tokens and logprobs of the runner without graphs
(the random tiny model mostly repeats its last token: the logprobs show the context read)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchllm_cli.engine.cuda_graphs import DecodeGraphs
from batchllm_cli.types import SamplingParams


@pytest.mark.parametrize("overlap", [False, True])  # True: decodes fed on the device, a step late
def test_decode_steps_through_the_graph_buffers_give_the_eager_tokens(overlap, monkeypatch):
    from batchllm_cli.engine.llm import LLM

    llm = LLM("tiny-llama", device="cpu", token_budget=48, num_kv_blocks=200, overlap=overlap)
    rng = np.random.default_rng(3)
    prefix = rng.integers(5, 200, 40).tolist()
    prompts = [prefix + rng.integers(5, 200, int(rng.integers(3, 30))).tolist() for _ in range(12)]
    prompts += [rng.integers(5, 200, int(rng.integers(3, 60))).tolist() for _ in range(6)]
    requests = llm.make_requests(prompts, SamplingParams(max_tokens=8, ignore_eos=True, logprobs=2))
    plan = llm.plan(requests)
    want = {c.index: c for c in llm.stream(requests, plan, warm=False)}

    # no capture on a CPU: every step that would replay a graph runs its forward on the buffers
    monkeypatch.setattr(DecodeGraphs, "full", property(lambda self: True))
    graphs = DecodeGraphs(llm.runner.model, llm.runner.kv_caches, llm.config.block_size, llm.max_model_len,
                          torch.device("cpu"))
    run, sizes = graphs.run, []

    def counted(layout, key, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        sizes.append((layout.num_decodes, key[0]))
        return run(layout, key, *args, **kw)

    graphs.run = counted
    llm.runner.graphs = graphs
    got = {c.index: c for c in llm.stream(requests, plan, warm=False)}
    assert {i: c.token_ids for i, c in got.items()} == {i: c.token_ids for i, c in want.items()}
    for i, c in got.items():
        assert [lp.logprob for lp in c.logprobs] == pytest.approx([lp.logprob for lp in want[i].logprobs], abs=1e-4)
        assert [[t.token_id for t in lp.top] for lp in c.logprobs] == [[t.token_id for t in lp.top] for lp in want[i].logprobs]
    assert len(sizes) >= 5 and any(n < size for n, size in sizes)  # decode steps ran there, padded ones too
