"""The sample job: greedy outputs with prefix sharing on == off == HF transformers.

sample_data/prompts.jsonl holds a few documents and instructions with several questions on
each; the reference (tests/e2e/data/hf_greedy_sample.json, made by scripts/make_hf_reference.py
--jsonl) generated each prompt alone with AutoModelForCausalLM, 16 new tokens.
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


def test_sample_file_is_what_the_reference_was_made_from(reference):
    lines = [json.loads(x) for x in (ROOT / "sample_data" / "prompts.jsonl").read_text().splitlines() if x.strip()]
    assert [(x["id"], x["prompt"]) for x in lines] == [(r["id"], r["prompt"]) for r in reference["records"]]


def test_sample_job_greedy_equals_hf_with_sharing_on_and_off(smollm2_source, smollm2_model, reference):
    from batchllm_cli.engine.llm import LLM

    llm = LLM.from_loaded(smollm2_source, smollm2_model, device="cpu", token_budget=128)
    records = reference["records"]
    params = SamplingParams(max_tokens=reference["max_new_tokens"])
    requests = llm.make_requests([r["prompt"] for r in records], params, ids=[r["id"] for r in records])
    assert [list(r.prompt_ids) for r in requests] == [r["prompt_ids"] for r in records]

    shared_plan = llm.plan(requests)
    assert shared_plan.stats.saving_ratio > 0.5  # the file is built around shared documents
    plain_plan = build_plan(requests, replace(llm.plan_settings(), prefix_sharing=False))
    shared = {c.index: list(c.token_ids) for c in llm.stream(requests, shared_plan)}
    plain = {c.index: list(c.token_ids) for c in llm.stream(requests, plain_plan)}

    expected = [r["output_ids"] for r in records]
    assert [i for i, e in enumerate(expected) if shared[i] != e] == [], "sharing on differs from HF"
    assert [i for i, e in enumerate(expected) if plain[i] != e] == [], "sharing off differs from HF"
