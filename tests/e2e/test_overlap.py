"""The step loop one step ahead (what CUDA runs) gives exactly the answers of the plain loop.

With EngineConfig.overlap the engine schedules and launches step N+1 before it applies step N's
tokens: decodes read their input token from the previous step's device-side output, stop checks
and finishes come a step late, and the extra token of a request that stopped is dropped. Run on
the CPU here (the same loop and scheduler as on a GPU), on the embedded model, with greedy and
seeded sampling, EOS and stop strings, shared prefixes and chunked prefills.
"""

from __future__ import annotations

from dataclasses import replace

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


def _params(penalties: bool = False) -> list[SamplingParams]:
    out = []
    for i in range(len(PROMPTS)):
        if i % 3 == 0:
            out.append(SamplingParams(max_tokens=12))  # greedy, EOS may stop it
        elif i % 3 == 1:
            out.append(SamplingParams(max_tokens=10, temperature=0.8, seed=i))
        else:
            out.append(SamplingParams(max_tokens=14, stop=(".", "\n")))
    if penalties:  # counted on the device, so these run one step ahead too; logprobs as well
        pen = [dict(repetition_penalty=1.3), dict(frequency_penalty=0.7, presence_penalty=0.4), dict(presence_penalty=1.5)]
        out = [replace(p, **pen[i % 3]) if i % 2 == 0 else replace(p, logprobs=i % 3) for i, p in enumerate(out)]
    return out


def _split(outputs):
    """The logprob reports of a run's completions: (token ids, logprob values), flattened."""
    ids, values = [], []
    for *_, logprobs in outputs:
        for lp in logprobs or ():
            ids.append((lp.token_id, tuple(t.token_id for t in lp.top)))
            values += [lp.logprob] + [t.logprob for t in lp.top]
        ids.append(logprobs is None)
    return ids, values


@pytest.mark.parametrize("budget,penalties", [(16, False), (64, False), (64, True)])
def test_one_step_ahead_answers_like_the_plain_loop(smollm2_source, smollm2_model, budget, penalties):
    from batchllm_cli.engine.llm import LLM

    def run(overlap: bool):
        llm = LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=budget,
                              num_kv_blocks=96, overlap=overlap)
        assert llm.runner.overlaps is overlap
        out = [(c.text, c.token_ids, c.finish_reason, c.logprobs) for c in llm.generate(PROMPTS, _params(penalties))]
        penalty_rows = llm.runner.sampler.penalties
        assert penalty_rows is None or len(penalty_rows) == 0  # every finished request gave its row back
        return out

    plain, ahead = run(False), run(True)
    # tokens exactly; logprobs to float noise (the loop one step ahead admits a step later, so
    # its steps batch other rows together, and a CPU matmul's rounding follows the batch shape)
    assert [c[:3] for c in ahead] == [c[:3] for c in plain]
    (ids_ahead, values_ahead), (ids_plain, values_plain) = _split(ahead), _split(plain)
    assert ids_ahead == ids_plain and values_ahead == pytest.approx(values_plain, abs=1e-4)
    assert {r for _, _, r, _ in plain} == {"length", "stop"}  # EOS, stop strings and max_tokens all end some
    if penalties:
        assert sum(lp is not None for *_, lp in plain) == 3  # the rows that asked got their reports


def test_start_up_warm_up_leaves_the_answers_as_they_were(smollm2_source, smollm2_model):
    # The warm-up runs one step of each eager shape of a dry run of the job, writing K/V into
    # blocks that no request holds yet; the job after it must answer exactly as without it.
    from batchllm_cli.engine.llm import LLM

    def run(warmup: bool):
        llm = LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=16, num_kv_blocks=96,
                              warmup=warmup, overlap=True)
        return llm, [(c.text, c.token_ids, c.finish_reason) for c in llm.generate(PROMPTS, _params())]

    _, cold = run(False)
    llm, warm = run(True)
    assert warm == cold
    report = llm.warm_up(llm.make_requests(PROMPTS, _params()), llm.plan(llm.make_requests(PROMPTS, _params())))
    assert report.steps > 0 and report.graph_keys == report.graphs_captured == 0  # no graphs on a CPU
    assert report.specializations > 1 and report.eager_steps_run == 0  # all run by the warm-up in generate
