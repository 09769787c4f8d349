"""Greedy outputs of the whole engine equal HF transformers', token for token, in one batch.

The reference (tests/e2e/data/hf_greedy_smollm2.json, made by scripts/make_hf_reference.py)
generated each prompt alone with AutoModelForCausalLM. Here all 32 prompts run in one batch
with a 64-token budget (prompts and shared prefixes longer than it are prefilled in chunks)
and a small KV pool (admission waits for memory), with prefix sharing on and off.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from batchllm_cli.planner import build_plan
from batchllm_cli.types import SamplingParams

DATA = Path(__file__).parent / "data" / "hf_greedy_smollm2.json"
TOKEN_BUDGET = 64


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def llm(smollm2_source, smollm2_model):
    from batchllm_cli.engine.llm import LLM

    # 150 blocks of 16 tokens hold about a third of the batch's worst case at once
    return LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=TOKEN_BUDGET, num_kv_blocks=150)


@pytest.fixture(scope="module")
def requests(llm, reference):
    prompts = [r["prompt_ids"] for r in reference["records"]]
    params = SamplingParams(max_tokens=reference["max_new_tokens"])
    return llm.make_requests(prompts, params, ids=[f"p{i}" for i in range(len(prompts))])


def run(llm, requests, plan):
    progress = []
    out = {c.index: c for c in llm.stream(requests, plan, on_progress=progress.append)}
    return [out[i] for i in range(len(requests))], progress


def test_our_tokenizer_gives_the_reference_prompt_ids(llm, reference):
    for r in reference["records"]:
        ids = llm.tokenizer.encode_chat(r["prompt"]) if r["kind"] == "chat" else llm.tokenizer.encode(r["prompt"])
        assert ids == r["prompt_ids"]


def test_greedy_equals_hf_with_prefix_sharing_on_and_off(llm, requests, reference):
    assert len(requests) >= 32
    assert max(r.prompt_len for r in requests) > TOKEN_BUDGET
    shared_plan = llm.plan(requests)
    shared_groups = [g for g in shared_plan.groups if g.prefix_len > 0]
    assert len(shared_groups) >= 2 and max(g.prefix_len for g in shared_groups) > TOKEN_BUDGET
    plain_plan = build_plan(requests, replace(llm.plan_settings(), prefix_sharing=False))
    assert all(g.prefix_len == 0 for g in plain_plan.groups)

    shared, shared_progress = run(llm, requests, shared_plan)
    plain, plain_progress = run(llm, requests, plain_plan)

    expected = [r["output_ids"] for r in reference["records"]]
    mismatched = [i for i, c in enumerate(shared) if list(c.token_ids) != expected[i]]
    assert not mismatched, f"sharing on: prompts {mismatched} differ from HF"
    mismatched = [i for i, c in enumerate(plain) if list(c.token_ids) != expected[i]]
    assert not mismatched, f"sharing off: prompts {mismatched} differ from HF"
    assert [c.text for c in shared] == [c.text for c in plain]

    # each finishes by EOS ("stop") or by max_tokens ("length"); usage is reported
    eos = set(llm.model_config.eos_token_ids)
    for c, exp in zip(shared, expected):
        assert c.finish_reason == ("stop" if exp[-1] in eos else "length")
        assert c.prompt_tokens == requests[c.index].prompt_len
    prefix_of = {m: g.prefix_len for g in shared_plan.groups for m in g.members}
    assert [c.shared_prefix_tokens for c in shared] == [prefix_of[i] for i in range(len(shared))]
    assert all(c.shared_prefix_tokens == 0 for c in plain)

    # sharing computed fewer prefill tokens for the same logical prompt tokens
    logical = sum(r.prompt_len for r in requests)
    assert shared_progress[-1].prompt_tokens == plain_progress[-1].prompt_tokens == logical
    assert plain_progress[-1].prefill_tokens == logical
    saved = logical - shared_progress[-1].prefill_tokens
    assert saved == sum(g.prefix_len * (len(g.members) - 1) for g in shared_groups)
    assert shared_progress[-1].requests_done == len(requests)
