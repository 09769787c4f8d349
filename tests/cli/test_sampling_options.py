"""`batchllm run` with logprobs and penalties: every line format answers with them, and the
options that change results are in the output's fingerprint only when set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchllm_cli.cli.app import app

CHAT = [{"role": "user", "content": "Name a colour."}]
LINES = [
    {"id": "plain", "prompt": "The capital of France is", "logprobs": 2},
    {"id": "chat", "messages": CHAT, "logprobs": True, "top_logprobs": 1},
    {"id": "penalized", "prompt": "1, 2, 3, 4,", "frequency_penalty": 2.0},
    {"custom_id": "oa-chat", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": CHAT, "logprobs": True, "top_logprobs": 3}},
    {"custom_id": "oa-cmpl", "method": "POST", "url": "/v1/completions",
     "body": {"model": "m", "prompt": "Once upon a time", "logprobs": 1}},
]


def _invoke(inp: Path, out: Path, *extra: str):
    result = CliRunner().invoke(app, ["run", str(inp), "-o", str(out), "--max-tokens", "4", "-q", "--device", "cpu", *extra])
    return result


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict]]:
    folder = tmp_path_factory.mktemp("sampling")
    inp, out = folder / "in.jsonl", folder / "out.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in LINES))
    result = _invoke(inp, out)
    assert result.exit_code == 0, result.output
    records = {r.get("custom_id") or r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    return inp, out, records


def test_every_format_reports_the_logprobs_it_asked_for(job) -> None:
    _, _, recs = job
    plain = recs["plain"]["logprobs"]
    assert len(plain) == recs["plain"]["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 and isinstance(e["token_id"], int) for e in plain)
    assert plain[0]["token"] == " Paris"
    assert all(len(e["top_logprobs"]) == 1 for e in recs["chat"]["logprobs"])
    assert "logprobs" not in recs["penalized"]
    chat = recs["oa-chat"]["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert chat and all(len(e["top_logprobs"]) == 3 and "bytes" in e for e in chat)
    cmpl = recs["oa-cmpl"]["response"]["body"]["choices"][0]["logprobs"]
    assert len(cmpl["tokens"]) == len(cmpl["token_logprobs"]) == len(cmpl["top_logprobs"]) == len(cmpl["text_offset"])
    assert "".join(cmpl["tokens"]) == recs["oa-cmpl"]["response"]["body"]["choices"][0]["text"]


def test_new_options_join_the_fingerprint_only_when_set(job) -> None:
    inp, out, _ = job
    settings = json.loads(Path(str(out) + ".batchllm.json").read_text())["settings"]
    assert settings["max_tokens"] == 4
    assert not {"min_tokens", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs"} & set(settings)
    assert _invoke(inp, out).exit_code == 0  # same settings: complete, nothing to do
    refused = _invoke(inp, out, "--repetition-penalty", "1.2")
    assert refused.exit_code == 3 and "--overwrite" in refused.output


def test_n_samples_of_a_line_share_its_prompt_and_answer_as_choices(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        {"id": "sampled", "prompt": "Our cat is small, grey and very curious, and she sleeps all day. "
                                    "A good name for her would be", "n": 3, "temperature": 1.0, "max_tokens": 6},
        {"id": "greedy", "prompt": "The capital of France is"},  # --n 2 below
        {"custom_id": "oa", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": CHAT, "n": 2, "temperature": 0.8}},
    ]
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = _invoke(inp, out, "-n", "2")
    assert result.exit_code == 0, result.output
    recs = {r.get("custom_id") or r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    sampled = recs["sampled"]
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in sampled["choices"]}) > 1  # each sample has a seed of its own
    # the prompt is computed once for all three, by one of the line's own samples: no token of it
    # came from another line's computation (the saving shows in the run's figures below)
    assert sampled["usage"]["shared_prefix_tokens"] == 0
    assert sampled["usage"]["completion_tokens"] <= 3 * 6
    greedy = [c["text"] for c in recs["greedy"]["choices"]]
    assert len(greedy) == 2 and greedy[0] == greedy[1]  # temperature 0: the same answer twice
    assert len(recs["oa"]["response"]["body"]["choices"]) == 2
    sidecar = json.loads(Path(str(out) + ".batchllm.json").read_text())
    assert sidecar["settings"]["n"] == 2 and sidecar["records"] == 3
    assert sidecar["last_run"]["requests"] == 7 and sidecar["last_run"]["completed"] == 3
    assert sidecar["last_run"]["prefix_tokens_saved"] > 0
    prompts = {k: r["usage"]["prompt_tokens"] if "usage" in r else r["response"]["body"]["usage"]["prompt_tokens"]
               for k, r in recs.items()}
    # every sample's prompt counts, as the engine's prefix saving does (saved <= prompt tokens)
    assert sidecar["last_run"]["prompt_tokens"] == 3 * prompts["sampled"] + 2 * prompts["greedy"] + 2 * prompts["oa"]
    assert 0 < sidecar["last_run"]["prefix_tokens_saved"] < sidecar["last_run"]["prompt_tokens"]
