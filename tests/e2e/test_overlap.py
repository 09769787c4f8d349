"""The step loop one step ahead (what CUDA runs) gives exactly the answers of the plain loop.

With EngineConfig.overlap the engine schedules and launches step N+1 before it applies step N's
tokens: decodes read their input token from the previous step's device-side output, stop checks
and finishes come a step late, and the extra token of a request that stopped is dropped. Run on
the CPU here (the same loop and scheduler as on a GPU), on the embedded model, with greedy and
seeded sampling, EOS and stop strings, shared prefixes and chunked prefills.
"""

from __future__ import annotations

import pytest

from batchllm_cli.types import SamplingParams

DOC = ("The lighthouse on the northern cape was built in 1871 by the harbour board. It stood on a "
       "rock above the bay and its lamp could be seen from twenty miles away on a clear night. ")
PROMPTS = [DOC + q for q in ("When was it built?", "Who built it?", "How far could its light be seen?",
                             "Where did it stand?")] + [
    "The capital of France is",
    [{"role": "user", "content": "Name a fruit that is red."}],
    "1, 2, 3, 4,",
]


def _params() -> list[SamplingParams]:
    out = []
    for i in range(len(PROMPTS)):
        if i % 3 == 0:
            out.append(SamplingParams(max_tokens=12))  # greedy, EOS may stop it
        elif i % 3 == 1:
            out.append(SamplingParams(max_tokens=10, temperature=0.8, seed=i))
        else:
            out.append(SamplingParams(max_tokens=14, stop=(".", "\n")))
    return out


@pytest.mark.parametrize("budget", [16, 64])
def test_one_step_ahead_answers_like_the_plain_loop(smollm2_source, smollm2_model, budget):
    from batchllm_cli.engine.llm import LLM

    def run(overlap: bool):
        llm = LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=budget,
                              num_kv_blocks=96, overlap=overlap)
        assert llm.runner.overlaps is overlap
        return [(c.text, c.token_ids, c.finish_reason) for c in llm.generate(PROMPTS, _params())]

    plain, ahead = run(False), run(True)
    assert ahead == plain
    assert {r for _, _, r in plain} == {"length", "stop"}  # EOS, stop strings and max_tokens all end some
