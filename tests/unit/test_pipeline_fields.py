"""Fields of the files other tools write: OpenAI's ranges and bookkeeping fields, vLLM's extras,
other tools' names on plain lines, the body's model, and the small parsing traps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchllm_cli.io.fields import FieldError, SamplingOverrides
from batchllm_cli.io.index import key_of
from batchllm_cli.io.reader import BadLine, InputRecord, LineRules, parse_line, read_input
from batchllm_cli.types import SamplingParams
from io_helpers import READER_CHAT, bad_line, json_line, openai_line, parse_obj, write_lines

CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"


def chat_body(**fields: Any) -> dict[str, Any]:
    return openai_line(CHAT_URL, {"messages": READER_CHAT, **fields})


@pytest.mark.parametrize("fields", [
    {"user": "u1", "metadata": {"k": "v"}, "store": True, "prompt_cache_key": "p", "safety_identifier": "s",
     "service_tier": "auto", "verbosity": "medium"},
    {"skip_special_tokens": True, "include_stop_str_in_output": False, "add_generation_prompt": True,
     "chat_template_kwargs": {}},
])
def test_neutral_fields_and_vllm_extras_at_their_defaults_are_accepted(fields: dict[str, Any]) -> None:
    rec = parse_obj(chat_body(**fields))
    assert isinstance(rec, InputRecord), rec


@pytest.mark.parametrize("name, value", [
    ("skip_special_tokens", False), ("include_stop_str_in_output", True), ("add_generation_prompt", False),
    ("chat_template_kwargs", {"enable_thinking": True}), ("verbosity", "low"),
    ("guided_json", {"type": "object"}),
])
def test_extras_that_would_change_the_output_are_refused(name: str, value: Any) -> None:
    bad = bad_line(chat_body(**{name: value}))
    assert (bad.code, bad.param, bad.openai, bad.status) == ("unsupported_field", name, True, 400)
    plain = bad_line({"prompt": "p", name: value})  # the same on a plain line
    assert (plain.code, plain.param) == ("unsupported_field", name)


def test_stop_token_ids_are_read_on_every_line_format() -> None:
    for obj in (chat_body(stop_token_ids=[7, 2, 7]), {"prompt": "p", "stop_token_ids": [7, 2]}):
        rec = parse_obj(obj)
        assert isinstance(rec, InputRecord) and rec.sampling.apply(SamplingParams()).stop_token_ids == (2, 7)
    assert parse_obj({"prompt": "p", "stop_token_ids": []}).sampling.apply(SamplingParams()).stop_token_ids == ()
    for bad in ("2", [2.5], [-1], [True], {"2": 1}):
        assert bad_line({"prompt": "p", "stop_token_ids": bad}).param == "stop_token_ids"


def test_ignore_eos_is_implemented_on_every_line_format() -> None:
    for obj in (chat_body(ignore_eos=True), {"prompt": "p", "ignore_eos": True}):
        rec = parse_obj(obj)
        assert isinstance(rec, InputRecord) and rec.sampling.apply(SamplingParams()).ignore_eos is True
    assert bad_line({"prompt": "p", "ignore_eos": "yes"}).param == "ignore_eos"


@pytest.mark.parametrize("fields, param", [
    ({"temperature": 3.0}, "temperature"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"n": 129}, "n"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
])
def test_openai_bodies_are_held_to_openai_ranges(fields: dict[str, Any], param: str) -> None:
    bad = bad_line(chat_body(**fields))
    assert (bad.param, bad.status, bad.openai) == (param, 400, True)


def test_completion_bodies_take_at_most_5_logprobs() -> None:
    ok = parse_obj(openai_line(COMPLETIONS_URL, {"prompt": "x", "model": "m", "logprobs": 5}))
    assert isinstance(ok, InputRecord) and ok.sampling.logprobs == 5
    bad = bad_line(openai_line(COMPLETIONS_URL, {"prompt": "x", "model": "m", "logprobs": 6}))
    assert (bad.param, bad.status) == ("logprobs", 400)
    plain = parse_obj({"prompt": "p", "logprobs": 6})  # plain lines keep vLLM's limit
    assert isinstance(plain, InputRecord) and plain.sampling.logprobs == 6


def test_plain_lines_keep_batchllm_limits() -> None:
    """vLLM takes any temperature >= 0 and any number of stop strings: so do plain lines."""
    rec = parse_obj({"prompt": "p", "temperature": 3.0, "stop": ["a", "b", "c", "d", "e"], "tool_choice": "auto"})
    assert isinstance(rec, InputRecord)
    assert rec.sampling.temperature == 3.0 and len(rec.sampling.stop or ()) == 5


@pytest.mark.parametrize("model, code, status", [
    (None, "missing_model", 400), (123, "invalid_field", 400), (["gpt-4o"], "invalid_field", 400),
    ("", "invalid_field", 400),
])
def test_the_body_needs_a_model_string(model: Any, code: str, status: int) -> None:
    obj = openai_line(COMPLETIONS_URL, {"prompt": "x", "model": model})
    if model is None:
        del obj["body"]["model"]
    bad = bad_line(obj)
    assert (bad.code, bad.param, bad.status) == (code, "model", status)


def test_served_model_names_make_other_models_a_404() -> None:
    served = LineRules(served_models=frozenset({"smol", "smol-instruct"}))
    ok = parse_line(json_line(openai_line(COMPLETIONS_URL, {"prompt": "x", "model": "smol"})), 1, served)
    assert isinstance(ok, InputRecord) and ok.model == "smol"
    bad = parse_line(json_line(openai_line(COMPLETIONS_URL, {"prompt": "x", "model": "gpt-4o"})), 1, served)
    assert isinstance(bad, BadLine)
    assert (bad.code, bad.status, bad.param) == ("model_not_found", 404, "model")
    anything = parse_obj(openai_line(COMPLETIONS_URL, {"prompt": "x", "model": "gpt-4o"}))  # no names: answered
    assert isinstance(anything, InputRecord) and anything.model == "gpt-4o"


def test_every_line_of_an_openai_file_is_an_openai_line(tmp_path: Path) -> None:
    """In a file whose first object is an OpenAI batch line, invalid JSON and lines of another
    shape are OpenAI lines too (answered with a batch envelope); in a plain file they are not."""
    good = json_line(openai_line(COMPLETIONS_URL, {"prompt": "x"}))
    path = write_lines(tmp_path / "oa.jsonl", [good, b"{not json\n", json_line({"id": "p", "prompt": "x"}), b"[1]\n"])
    recs = list(read_input(path))
    assert isinstance(recs[0], InputRecord)
    assert all(isinstance(r, BadLine) and r.openai for r in recs[1:])
    assert (recs[2].id, recs[2].param) == (None, "custom_id")
    plain = write_lines(tmp_path / "plain.jsonl", [json_line({"prompt": "x"}), b"{not json\n"])
    assert not list(read_input(plain))[1].openai


@pytest.mark.parametrize("obj, want", [
    ({"prompt": "p", "stop_sequences": ["\n"]}, ("stop", ("\n",))),
    ({"prompt": "p", "max_completion_tokens": 7}, ("max_tokens", 7)),
    ({"prompt": "p", "max_new_tokens": 9}, ("max_tokens", 9)),
])
def test_other_tools_names_on_plain_lines(obj: dict[str, Any], want: tuple[str, Any]) -> None:
    rec = parse_obj(obj)
    assert isinstance(rec, InputRecord)
    assert getattr(rec.sampling, want[0]) == want[1]


def test_num_return_sequences_and_system_on_plain_lines() -> None:
    assert parse_obj({"prompt": "p", "num_return_sequences": 3}).n == 3
    rec = parse_obj({"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]})
    assert isinstance(rec, InputRecord) and rec.messages == tuple(READER_CHAT)
    assert bad_line({"system": "Be brief.", "prompt": "Hi"}).param == "system"
    assert bad_line({"prompt": "p", "stop": ["a"], "stop_sequences": ["b"]}).param == "stop_sequences"


@pytest.mark.parametrize("key", ["²", "١٢", "-1", "1.5", " 1"])
def test_logit_bias_keys_that_are_not_ascii_token_ids_are_a_line_error(key: str) -> None:
    bad = bad_line({"prompt": "p", "logit_bias": {key: 1}})
    assert (bad.code, bad.param) == ("invalid_field", "logit_bias")


def test_tiny_temperatures_are_greedy() -> None:
    """Dividing float32 logits by less than ~1e-38 overflows: such temperatures sample greedily."""
    rec = parse_obj({"prompt": "p", "temperature": 1e-40})
    assert isinstance(rec, InputRecord) and rec.sampling.apply(SamplingParams()).temperature == 0.0
    assert SamplingParams(temperature=1e-30).temperature == 0.0
    assert SamplingParams(temperature=0.5).temperature == 0.5


def test_min_tokens_above_max_tokens_is_refused() -> None:
    assert bad_line({"prompt": "p", "min_tokens": 9, "max_tokens": 3}).param == "min_tokens"
    # only min_tokens on the line: checked against the job's max_tokens when applied
    rec = parse_obj({"prompt": "p", "min_tokens": 300})
    assert isinstance(rec, InputRecord)
    with pytest.raises(FieldError, match="above max_tokens 256"):
        rec.sampling.apply(SamplingParams())
    assert SamplingOverrides(min_tokens=3).apply(SamplingParams()).min_tokens == 3


def test_int_and_text_ids_are_distinct_keys() -> None:
    assert key_of(5, 1) != key_of("5", 1)
    assert parse_obj({"id": 5, "prompt": "p"}).id == 5
