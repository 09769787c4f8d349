"""Logprobs and repetition penalties on the embedded model, against transformers' own model.

Logprobs: the engine's report for each output token (with prefix sharing on) equals the
log_softmax of transformers' logits over prompt + our tokens, teacher-forced. Penalties: greedy
decoding with repetition_penalty gives transformers' `generate(repetition_penalty=...)` tokens.
"""

from __future__ import annotations

import pytest
import torch

from batchllm_cli.types import SamplingParams

SHARED = (
    "You are a careful assistant. Answer in one short sentence, and do not repeat the question. "
    "Context: the river runs north through the valley, past three mills and an old stone bridge. "
)
PROMPTS = [SHARED + "Question: which way does the river run?", SHARED + "Question: what crosses the river?",
           "List the days of the week: Monday, Tuesday,"]


@pytest.fixture(scope="module")
def llm(smollm2_source, smollm2_model):
    from batchllm_cli.engine.llm import LLM

    return LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=64, num_kv_blocks=64)


def _hf_logprobs(hf_model, prompt_ids, output_ids) -> torch.Tensor:
    """[len(output_ids), vocab] transformers' log-probabilities at each output position."""
    ids = torch.tensor([list(prompt_ids) + list(output_ids)])
    with torch.no_grad():
        logits = hf_model(ids).logits[0, len(prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1)


def test_logprobs_equal_transformers_teacher_forced(llm, smollm2_hf_model):
    requests = llm.make_requests(PROMPTS, SamplingParams(max_tokens=8, logprobs=3, ignore_eos=True))
    assert any(g.prefix_len > 0 for g in llm.plan(requests).groups)  # the questions share their context
    out = sorted(llm.stream(requests), key=lambda c: c.index)
    for req, c in zip(requests, out):
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) == 8
        ref = _hf_logprobs(smollm2_hf_model, req.prompt_ids.tolist(), c.token_ids)
        for pos, lp in enumerate(c.logprobs):
            assert lp.token_id == c.token_ids[pos]
            assert lp.logprob == pytest.approx(ref[pos, lp.token_id].item(), abs=2e-3)
            assert lp.top[0].token_id == lp.token_id  # greedy: the drawn token is the most likely
            assert [t.logprob for t in lp.top] == pytest.approx(ref[pos].topk(3).values.tolist(), abs=2e-3)
            assert lp.token == llm.tokenizer.token_text(lp.token_id)
        if not set(c.token_ids) & set(llm.model_config.eos_token_ids):  # special tokens are not in the text
            assert "".join(lp.token for lp in c.logprobs) == c.text


def test_logprobs_do_not_depend_on_prefix_sharing(smollm2_source, smollm2_model, llm):
    from batchllm_cli.engine.llm import LLM

    params = SamplingParams(max_tokens=6, logprobs=2, ignore_eos=True)
    shared = llm.generate(PROMPTS[:2], params)
    alone = LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", num_kv_blocks=64, prefix_sharing=False)
    unshared = alone.generate(PROMPTS[:2], params)
    assert [c.shared_prefix_tokens > 0 for c in shared] == [True, True]
    for a, b in zip(shared, unshared):
        assert a.token_ids == b.token_ids
        assert [x.logprob for x in a.logprobs] == pytest.approx([x.logprob for x in b.logprobs], abs=1e-4)


def test_repetition_penalty_greedy_equals_transformers(llm, smollm2_hf_model):
    prompt = PROMPTS[2]
    plain, penalized = llm.generate([prompt, prompt], [SamplingParams(max_tokens=12),
                                                       SamplingParams(max_tokens=12, repetition_penalty=1.5)])
    assert plain.token_ids != penalized.token_ids  # the penalty changes what this prompt gives
    ids = torch.tensor([llm.tokenizer.encode(prompt)])
    with torch.no_grad():
        hf = smollm2_hf_model.generate(ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.5,
                                       eos_token_id=None, pad_token_id=0)
    assert list(penalized.token_ids) == hf[0, ids.shape[1]:].tolist()


def test_frequency_penalty_breaks_repeats(llm):
    def most_repeated(c) -> int:
        return max(c.token_ids.count(t) for t in set(c.token_ids))

    prompt = "1, 2, 3, 4,"
    plain, frequency = llm.generate([prompt] * 2, [
        SamplingParams(max_tokens=12, ignore_eos=True),
        SamplingParams(max_tokens=12, ignore_eos=True, frequency_penalty=2.0),
    ])
    assert plain.text.startswith(" 5, 6, 7, 8,") and most_repeated(plain) >= 4  # ", " again and again
    assert most_repeated(frequency) < most_repeated(plain)


def test_min_tokens_holds_back_eos_and_stop_strings(llm):
    chat = [[{"role": "user", "content": "Name a fruit that is red."}]]
    [short] = llm.generate(chat, SamplingParams(max_tokens=40))
    assert short.finish_reason == "stop" and short.token_ids[-1] in llm.model_config.eos_token_ids
    n = len(short.token_ids) + 4
    [longer] = llm.generate(chat, SamplingParams(max_tokens=40, min_tokens=n))
    assert len(longer.token_ids) >= n
    assert not set(longer.token_ids[:n]) & set(llm.model_config.eos_token_ids)
    assert longer.token_ids[: len(short.token_ids) - 1] == short.token_ids[:-1]  # the same until EOS was due
    [cut] = llm.generate(["1, 2, 3, 4,"], SamplingParams(max_tokens=12, stop=(",",), min_tokens=4))
    assert len(cut.token_ids) >= 4 and cut.text.startswith(" 5, 6")


def test_logit_bias_bans_and_forces_tokens(llm):
    prompt = "The capital of France is"
    paris, london = llm.tokenizer.encode(" Paris")[0], llm.tokenizer.encode(" London")[0]
    plain, banned, forced = llm.generate([prompt] * 3, [
        SamplingParams(max_tokens=1),
        SamplingParams(max_tokens=1, logit_bias=((paris, -100.0),)),
        SamplingParams(max_tokens=1, logit_bias=((london, 100.0),)),
    ])
    assert plain.token_ids == (paris,) and banned.token_ids != (paris,) and forced.token_ids == (london,)
