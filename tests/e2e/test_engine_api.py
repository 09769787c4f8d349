"""The LLM API on the embedded model: prompt kinds, order, stop strings, seeds, errors."""

from __future__ import annotations

import pytest

from batchllm_cli.errors import CapacityError, InputError
from batchllm_cli.types import SamplingParams

PROMPTS = [
    "The capital of France is",
    [{"role": "user", "content": "Name a fruit that is red."}],
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def llm(smollm2_source, smollm2_model):
    from batchllm_cli.engine.llm import LLM

    return LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=48, num_kv_blocks=64)


def test_generate_returns_input_order_and_stream_completion_order(llm):
    params = [SamplingParams(max_tokens=n) for n in (12, 3, 6, 1)]
    out = llm.generate(PROMPTS, params)
    assert [c.index for c in out] == [0, 1, 2, 3]
    assert [c.id for c in out] == ["0", "1", "2", "3"]
    assert out[0].text.startswith(" Paris")
    assert [len(c.token_ids) for c in out] == [12, 3, 6, 1]
    assert all(c.finish_reason == "length" for c in out)
    streamed = [c.index for c in llm.stream(llm.make_requests(PROMPTS, params))]
    assert sorted(streamed) == [0, 1, 2, 3] and streamed[0] == 3  # 1 token: first to finish
    chat_ids = llm.tokenizer.encode_chat(PROMPTS[1])
    assert out[1].prompt_tokens == len(chat_ids)


def test_stop_string_cuts_the_text(llm):
    [full] = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))
    assert full.text.startswith(" Paris.")
    [cut] = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8, stop=(".",)))
    assert cut.text == " Paris" and cut.finish_reason == "stop"
    assert len(cut.token_ids) < 8


def test_eos_stops_unless_ignored(llm):
    chat = [PROMPTS[1]]
    [stopped] = llm.generate(chat, SamplingParams(max_tokens=40))
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] in llm.model_config.eos_token_ids
    [forced] = llm.generate(chat, SamplingParams(max_tokens=len(stopped.token_ids) + 3, ignore_eos=True))
    assert forced.finish_reason == "length" and len(forced.token_ids) == len(stopped.token_ids) + 3


def test_seeded_sampling_does_not_depend_on_the_batch(llm):
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=1234)
    [alone] = llm.generate([PROMPTS[2]], params)
    batch = llm.generate(PROMPTS[:2] + [PROMPTS[2]] + PROMPTS[3:], [SamplingParams(max_tokens=5)] * 2 + [params] * 2)
    assert batch[2].token_ids == alone.token_ids
    [other_seed] = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=10, temperature=0.9, seed=99))
    assert other_seed.token_ids != alone.token_ids


def test_bad_prompts_are_refused_with_the_reason(llm):
    with pytest.raises(InputError, match="empty"):
        llm.make_requests([""])
    with pytest.raises(InputError, match="exceeds the model's context"):
        llm.make_requests([[5] * 100], SamplingParams(max_tokens=llm.max_model_len - 99))
    with pytest.raises(InputError, match="token ids must be in"):
        llm.make_requests([[5, llm.model_config.vocab_size]])


def test_a_request_larger_than_the_pool_raises_capacity_error(llm):
    requests = llm.make_requests([[5] * 500], SamplingParams(max_tokens=600))
    with pytest.raises(CapacityError, match="needs 69 KV blocks"):
        next(llm.stream(requests))
