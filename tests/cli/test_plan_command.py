"""`batchllm plan` on the sample file: the report's figures, the plan file, and `run --plan`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from batchllm_cli.cli.app import app
from batchllm_cli.planner import Plan

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "prompts.jsonl"
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory):
    """The JSON report and the plan file of the sample job (max_tokens 8)."""
    plan_file = tmp_path_factory.mktemp("plan") / "plan.json"
    result = _invoke("plan", str(SAMPLE), "--max-tokens", "8", "--json", str(plan_file), "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), plan_file


@pytest.fixture
def one_thread():
    """One torch thread for the in-process runs: on a shared 2-core machine two intra-op threads
    that wait on each other made the tiny model's run 10x slower; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prompts_by_id() -> dict[str, list[dict[str, str]]]:
    """The sample file's chat messages by id."""
    return {json.loads(x)["id"]: json.loads(x)["messages"] for x in SAMPLE.read_text().splitlines() if x.strip()}


def test_report_figures_agree_with_the_token_ids(planned):
    from batchllm_cli.engine.tokenizer import Tokenizer
    from batchllm_cli.models.loader import resolve_model

    report, plan_file = planned
    plan = Plan.from_json(plan_file.read_bytes())
    prompts = list(_prompts_by_id().values())
    source = resolve_model(None)
    tokenizer = Tokenizer.load(source.tokenizer_dir, source.tokenizer_gguf_file)
    ids = [tokenizer.encode_chat(m) for m in prompts]
    assert report["num_requests"] == len(prompts) == plan.num_requests
    assert report["logical_prefill_tokens"] == sum(len(x) for x in ids)
    # processed = each group's prefix once + every member's distinct part, from the ids
    processed = 0
    for g in plan.groups:
        first = np.asarray(ids[g.members[0]][: g.prefix_len])
        assert all(np.array_equal(ids[m][: g.prefix_len], first) for m in g.members)
        processed += g.prefix_len + sum(len(ids[m]) - g.prefix_len for m in g.members)
    assert report["processed_prefill_tokens"] == processed
    assert report["saving_ratio"] == pytest.approx(1 - processed / report["logical_prefill_tokens"], abs=1e-6)
    # the sample file has one document per id family (grinder-01, grinder-02, ...)
    families = {i.rsplit("-", 1)[0] for i in _prompts_by_id()}
    assert report["num_shared_groups"] == len(families)
    assert sum(d * n for d, n in report["degree_histogram"]) == len(prompts)
    assert report["lru_saving_ratio"] is not None and report["lru_saving_ratio"] <= report["saving_ratio"]
    top = report["top_groups"][0]
    text = " ".join(tokenizer.decode(ids[top["members"][0]]).split())
    assert top["prefix_preview"] and text.startswith(top["prefix_preview"][:40])


def test_table_report_shows_the_saving(planned):
    report, _ = planned
    result = _invoke("plan", str(SAMPLE), "--max-tokens", "8", "--device", "cpu", "--top", "2")
    assert result.exit_code == 0, result.output
    assert f"{report['saving_ratio']:.1%}" in result.stdout and "Sharing degree" in result.stdout
    assert "Top 2 groups" in result.stdout


@pytest.mark.parametrize("text, words", [("", "no input lines"), ("not json\n[1]\n", "only bad lines (2)")])
def test_nothing_to_plan_says_so_instead_of_an_empty_report(tmp_path, text, words):
    src = tmp_path / "in.jsonl"
    src.write_text(text)
    result = _invoke("plan", str(src), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"{words}: nothing to plan" in " ".join(result.stderr.split())
    assert "Sharing degree" not in result.stdout
    doc = json.loads(_invoke("plan", str(src), "--device", "cpu", "--format", "json").stdout)
    assert doc["num_requests"] == 0  # scripts still get the (empty) report


def test_no_prefix_sharing_plans_every_prompt_alone():
    result = _invoke("plan", str(SAMPLE), "--no-prefix-sharing", "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["num_shared_groups"] == 0 and doc["saving_ratio"] == 0
    assert doc["processed_prefill_tokens"] == doc["logical_prefill_tokens"]


def test_run_with_the_plan_and_refusal_of_another_files_plan(tmp_path, one_thread):
    # tiny-llama: random weights behind the embedded tokenizer, so the run costs seconds
    plan_file = tmp_path / "plan.json"
    made = _invoke("plan", str(SAMPLE), "--model", "tiny-llama", "--max-tokens", "4", "--json", str(plan_file), "--device", "cpu")
    assert made.exit_code == 0, made.output
    assert f"--plan {plan_file}" in " ".join(made.stdout.split())
    out = tmp_path / "out.jsonl"
    common = ("--model", "tiny-llama", "--max-tokens", "4", "-q", "--device", "cpu")
    ok = _invoke("run", str(SAMPLE), "-o", str(out), "--plan", str(plan_file), *common)
    assert ok.exit_code == 0, ok.output
    assert sorted(json.loads(x)["id"] for x in out.read_text().splitlines()) == sorted(_prompts_by_id())
    other = ROOT / "sample_data" / "chat.jsonl"
    refused = _invoke("run", str(other), "-o", str(tmp_path / "o2.jsonl"), "--plan", str(plan_file), *common)
    assert refused.exit_code == 6 and "plan" in refused.output
    # another max_tokens is another job (it orders the groups and sizes their KV)
    refused = _invoke("run", str(SAMPLE), "-o", str(tmp_path / "o3.jsonl"), "--plan", str(plan_file), *common[:2], "--max-tokens", "5", "-q", "--device", "cpu")
    assert refused.exit_code == 6
    damaged = tmp_path / "bad.json"
    damaged.write_text("{not json")
    refused = _invoke("run", str(SAMPLE), "-o", str(tmp_path / "o4.jsonl"), "--plan", str(damaged), *common)
    assert refused.exit_code == 6 and "plan" in refused.output
