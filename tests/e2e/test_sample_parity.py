"""The sample job: greedy outputs with prefix sharing on == off == HF transformers.

The reference (tests/e2e/data/hf_greedy_sample.json, made by scripts/make_hf_reference.py
--jsonl from the plain-prompt version of sample_data/prompts.jsonl, before the sample file
became chat messages) holds its 50 prompts (a few documents and instructions with several
questions on each), their token ids, and each one's greedy output from AutoModelForCausalLM
alone, 16 new tokens.

Both runs cover all 50 prompts (sharing off recomputes every prefix: 4.3x the prefill tokens).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from batchllm_cli.planner import build_plan
from batchllm_cli.types import SamplingParams

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "hf_greedy_sample.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(DATA.read_text())


@pytest.fixture
def one_thread():
    """One torch thread for this test: on a shared 2-core machine two intra-op threads that wait
    on each other made the same job 8x slower (130 s vs 16 s measured); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sample_file_asks_what_the_reference_asked(reference):
    """The sample file's chat lines carry the reference's prompts: the document and instruction as
    the system message, the question (or the message to classify) as the user's."""
    lines = [json.loads(x) for x in (ROOT / "sample_data" / "prompts.jsonl").read_text().splitlines() if x.strip()]
    assert [x["id"] for x in lines] == [r["id"] for r in reference["records"]]
    for x, r in zip(lines, reference["records"]):
        system, user = (m["content"] for m in x["messages"])
        assert r["prompt"].startswith(system + "\n\n") and user.removeprefix("Message: ") in r["prompt"]


def _outputs(llm, requests, plan) -> dict[str, list[int]]:
    return {requests[c.index].id: list(c.token_ids) for c in llm.stream(requests, plan)}


def test_sample_job_greedy_equals_hf_with_sharing_on_and_off(smollm2_source, smollm2_model, reference, one_thread):
    from batchllm_cli.engine.llm import LLM

    # 128 tokens a step: prompts of 106..252 tokens are prefilled in chunks, prefixes too
    llm = LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=128)
    records = reference["records"]
    expected = {r["id"]: r["output_ids"] for r in records}
    params = SamplingParams(max_tokens=reference["max_new_tokens"])
    requests = llm.make_requests([r["prompt"] for r in records], params, ids=[r["id"] for r in records])
    assert [list(r.prompt_ids) for r in requests] == [r["prompt_ids"] for r in records]

    shared_plan = llm.plan(requests)
    assert shared_plan.stats.saving_ratio > 0.5  # the file is built around shared documents
    assert sum(len(g.members) for g in shared_plan.groups if g.prefix_len) == len(requests)
    shared = _outputs(llm, requests, shared_plan)
    assert sorted(shared) == sorted(expected)
    assert [i for i in expected if shared[i] != expected[i]] == [], "sharing on differs from HF"

    plain_plan = build_plan(requests, replace(llm.plan_settings(), prefix_sharing=False))
    assert all(g.prefix_len == 0 for g in plain_plan.groups)
    plain = _outputs(llm, requests, plain_plan)
    assert sorted(plain) == sorted(expected)
    assert [i for i in expected if plain[i] != expected[i]] == [], "sharing off differs from HF"
    assert plain == shared
