"""stop_token_ids (vLLM's): drawing one ends the request; before min_tokens it is kept out."""

from __future__ import annotations

import pytest

from batchllm_cli.errors import InputError
from batchllm_cli.types import SamplingParams

PROMPT = [{"role": "user", "content": "Count from one to ten in words."}]


@pytest.fixture(scope="module")
def llm(smollm2_source, smollm2_model):
    from batchllm_cli.engine.llm import LLM

    return LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=64, num_kv_blocks=64)


def test_a_stop_token_ends_the_request_and_min_tokens_keeps_it_out(llm):
    [free] = llm.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True))
    stop_at = next(k for k in range(2, 12) if free.token_ids[k] not in free.token_ids[:k])
    token = free.token_ids[stop_at]
    [stopped] = llm.generate([PROMPT], SamplingParams(max_tokens=12, stop_token_ids=(token,)))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: stop_at + 1]  # the stop token is kept, as vLLM does
    [held] = llm.generate([PROMPT], SamplingParams(max_tokens=12, min_tokens=stop_at + 2, ignore_eos=True,
                                                   stop_token_ids=(token,)))
    assert token not in held.token_ids[: stop_at + 2]  # never drawn before min_tokens
    assert held.token_ids[:stop_at] == free.token_ids[:stop_at]


def test_stop_token_ids_outside_the_vocabulary_are_refused(llm):
    with pytest.raises(InputError, match="stop_token_ids"):
        llm.make_requests(["hi"], SamplingParams(stop_token_ids=(10**7,)))
