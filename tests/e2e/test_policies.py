"""The peers' policies on the embedded model: reused cached KV gives the same greedy tokens as
BatchLLM's plan, and the completions say how much of each prompt came from the cache."""

from __future__ import annotations

import pytest

from batchllm_cli.types import SamplingParams

CONTEXT = (
    "You are a helpful assistant for a hardware shop. Answer in one sentence. The shop sells "
    "hammers, saws, drills, screws, nails and paint, and it is open from nine to six every day "
    "except Sunday. "
)
PROMPTS = [CONTEXT + q for q in ("Question: when is the shop open?", "Question: does it sell paint?",
                                 "Question: is it open on Sunday?")] + ["Tell me a short joke about cats."]


def _llm(source, model, policy):
    from batchllm_cli.engine.llm import LLM

    # 48 tokens a step: the first prompt is stored by the time the third is admitted
    return LLM.from_loaded(source, model, device="cpu", token_budget=48, num_kv_blocks=64, policy=policy)


@pytest.mark.parametrize("policy", ["vllm-like", "sglang-like"])
def test_policies_answer_as_batchllm_does(smollm2_source, smollm2_model, policy):
    params = SamplingParams(max_tokens=8)
    ours = _llm(smollm2_source, smollm2_model, "batchllm").generate(PROMPTS, params)
    peer = _llm(smollm2_source, smollm2_model, policy).generate(PROMPTS, params)
    assert [c.token_ids for c in peer] == [c.token_ids for c in ours]
    cached = [c.shared_prefix_tokens for c in peer]
    assert cached[0] == 0 and cached[3] == 0  # nothing cached yet; nothing shared
    assert cached[2] > 0 and all(n % 16 == 0 for n in cached)  # whole 16-token blocks of the context


def test_an_unknown_policy_is_a_config_error(smollm2_source, smollm2_model):
    from batchllm_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="policy must be one of"):
        _llm(smollm2_source, smollm2_model, "fifo")
