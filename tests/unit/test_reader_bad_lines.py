"""Bad input lines: each becomes one BadLine with its line number, a code, the field at fault
and a message a user can act on (OpenAI lines: answered as a 400); good lines around them read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchllm_cli.io.reader import InputRecord, read_input
from io_helpers import READER_CHAT, bad_line, json_line, openai_line, parse_obj, write_lines


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "x", "prompt": "no closing brace"\n',
        b'{"id": "x", "prompt": hello}\n',
        b"\x00\xff\xfe garbage \x89PNG\x1a\n",
        b'{"id": "x", "prompt": "bad utf-8 \xff"}\n',
        b'{"id": "x", "prompt": "lone surrogate \\ud800"}\n',
    ],
    ids=["unclosed", "bare-word", "binary", "invalid-utf8", "lone-surrogate"],
)
def test_invalid_json_is_a_bad_line(raw: bytes) -> None:
    """A line that is not JSON becomes an invalid_json BadLine with its line number and no id."""
    bad = bad_line(None, 7, raw=raw)
    assert (bad.code, bad.id, bad.openai) == ("invalid_json", None, False)
    assert "not valid JSON" in bad.message
    assert bad.describe().startswith("line 7: ")


@pytest.mark.parametrize("obj", [[1, 2, 3], "a string", 5, None, True])
def test_non_object_line_is_a_bad_line(obj: Any) -> None:
    """A JSON value that is not an object is refused, saying what it is."""
    bad = bad_line(obj, 3)
    assert (bad.code, bad.id) == ("invalid_json", None)
    assert "must be a JSON object" in bad.message


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"seed": 2**63}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
    ],
)
def test_wrong_sampling_types_and_ranges(extra: dict[str, Any], param: str) -> None:
    """A sampling field of the wrong type or out of range is an invalid_field naming the field,
    and the line keeps its id so its error record can be matched."""
    bad = bad_line({"id": "q", "prompt": "p", **extra}, 5)
    assert (bad.code, bad.param, bad.id) == ("invalid_field", param, "q")
    assert param in bad.message
    assert bad.describe().startswith("line 5 (id 'q'): ")


@pytest.mark.parametrize(
    "messages, param",
    [
        ("hello", "messages"),
        ({"role": "user", "content": "hi"}, "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
    ],
)
def test_bad_messages(messages: Any, param: str) -> None:
    """messages must be a non-empty list of {role, content} objects with known roles."""
    bad = bad_line({"id": "q", "messages": messages})
    assert (bad.code, bad.param) == ("invalid_field", param)


def test_non_text_content_part_is_unsupported() -> None:
    """An image (or other non-text) content part is refused as unsupported."""
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    bad = bad_line({"id": "q", "messages": msgs})
    assert (bad.code, bad.param) == ("unsupported_field", "messages[0].content")


@pytest.mark.parametrize(
    "obj",
    [
        {"id": "q", "prompt": ""},
        {"id": "q", "prompt": "  \n\t"},
        {"id": "q", "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": " "}]},
    ],
)
def test_empty_prompt(obj: dict[str, Any]) -> None:
    """An empty or whitespace-only prompt (or all-empty messages) is an empty_prompt."""
    bad = bad_line(obj)
    assert (bad.code, bad.id) == ("empty_prompt", "q")


def test_prompt_of_wrong_type() -> None:
    """A prompt that is not a string is an invalid_field on prompt."""
    bad = bad_line({"id": "q", "prompt": ["a"]})
    assert (bad.code, bad.param) == ("invalid_field", "prompt")


@pytest.mark.parametrize(
    "obj, why",
    [
        ({"id": "q", "prompt": "a", "messages": READER_CHAT}, "both"),
        ({"id": "q"}, "neither"),
        ({"id": "q", "temperature": 0.5}, "neither"),
    ],
)
def test_needs_exactly_one_of_prompt_and_messages(obj: dict[str, Any], why: str) -> None:
    """A line with both prompt and messages, or neither, is a missing_prompt saying which."""
    bad = bad_line(obj)
    assert (bad.code, bad.id) == ("missing_prompt", "q")
    assert why in bad.message


@pytest.mark.parametrize(
    "extra, param",
    [({"best_of": 3}, "best_of"), ({"echo": True}, "echo"), ({"stream": True}, "stream")],
)
def test_unsupported_options_are_refused(extra: dict[str, Any], param: str) -> None:
    """An option batchllm does not implement, set to a value that changes the output, is refused."""
    bad = bad_line({"id": "q", "prompt": "p", **extra})
    assert (bad.code, bad.param) == ("unsupported_field", param)
    assert "not supported" in bad.message


@pytest.mark.parametrize(
    "typo, meant", [("max_token", "max_tokens"), ("temprature", "temperature"), ("promt", "prompt")]
)
def test_misspelt_field_is_refused_with_a_suggestion(typo: str, meant: str) -> None:
    """A misspelt known field is an unknown_field that suggests the right name."""
    obj = {"id": "q", "prompt": "p", typo: 3}
    bad = bad_line(obj)
    assert (bad.code, bad.param) == ("unknown_field", typo)
    assert f"did you mean {meant!r}" in bad.message


def test_unrelated_extra_field_is_ignored() -> None:
    """A field far from every known name (user metadata) does not make the line bad."""
    rec = parse_obj({"id": "q", "prompt": "p", "source": "wiki", "category": 3})
    assert isinstance(rec, InputRecord) and rec.prompt == "p"


@pytest.mark.parametrize("rid", ["", True, 1.5, [1], {"a": 1}])
def test_unusable_id(rid: Any) -> None:
    """An id that is not a non-empty string or an integer is an invalid_field on id, id unknown."""
    bad = bad_line({"id": rid, "prompt": "p"})
    assert (bad.code, bad.param, bad.id) == ("invalid_field", "id", None)


@pytest.mark.parametrize(
    "obj, code, param",
    [
        (openai_line("/v1/embeddings", {"input": "x"}), "invalid_url", "url"),
        (openai_line("/v1/responses", {"input": "x"}), "invalid_url", "url"),
        ({"custom_id": "c1", "method": "POST", "body": {"prompt": "x"}}, "invalid_url", "url"),
        (openai_line("/v1/completions", {"prompt": "x"}, method="GET"), "invalid_method", "method"),
        (openai_line("/v1/chat/completions", "not an object"), "invalid_field", "body"),  # type: ignore[arg-type]
        (openai_line("/v1/chat/completions", {"messages": READER_CHAT, "best_of": 2}), "unsupported_field", "best_of"),
        (openai_line("/v1/chat/completions", {"messages": READER_CHAT, "n": 0}), "invalid_field", "n"),
        (openai_line("/v1/completions", {"prompt": "x", "n": 129}), "invalid_field", "n"),
        (openai_line("/v1/chat/completions", {"messages": READER_CHAT, "max_completion_tokens": "5"}), "invalid_field",
         "max_completion_tokens"),
        (openai_line("/v1/chat/completions", {"messages": READER_CHAT, "frobnicate": 1}), "unknown_field", "frobnicate"),
        (openai_line("/v1/completions", {"prompt": "x", "max_completion_tokens": 3}), "unknown_field",
         "max_completion_tokens"),
        (openai_line("/v1/completions", {"prompt": ""}), "empty_prompt", "prompt"),
        (openai_line("/v1/chat/completions", {"model": "x"}), "invalid_field", "messages"),
        (openai_line("/v1/chat/completions", {"prompt": "x"}), "unknown_field", "prompt"),
    ],
)
def test_bad_openai_line_is_answered_as_a_400(obj: dict[str, Any], code: str, param: str) -> None:
    """What the OpenAI endpoint would refuse is a BadLine flagged openai, keeping the custom_id."""
    bad = bad_line(obj, 2)
    assert (bad.code, bad.param, bad.id, bad.openai) == (code, param, "c1", True)


@pytest.mark.parametrize("cid", [None, "", False])
def test_openai_line_without_usable_custom_id(cid: Any) -> None:
    """An OpenAI line whose custom_id is missing or unusable has nothing to name it by: an
    invalid_field on custom_id, still answered with a batch envelope (custom_id null)."""
    obj = openai_line("/v1/completions", {"prompt": "x"}, custom_id=cid)
    if cid is None:
        del obj["custom_id"]
    bad = bad_line(obj)
    assert (bad.code, bad.param, bad.id, bad.openai) == ("invalid_field", "custom_id", None, True)


def test_every_bad_line_is_reported_and_good_lines_still_read(tmp_path: Path) -> None:
    """In a file, each bad line yields one BadLine with its own line number, between good records."""
    path = write_lines(tmp_path / "in.jsonl", [
        json_line({"id": "a", "prompt": "x"}),
        b"{oops\n",
        json_line({"id": "b", "prompt": "y", "max_tokens": "ten"}),
        json_line({"id": "c", "messages": READER_CHAT}),
        b"\n",
        json_line([1]),
        json_line({"id": "d", "prompt": "z"}),
    ])
    got = [(r.line, type(r).__name__, r.id, getattr(r, "code", None)) for r in read_input(path)]
    assert got == [
        (1, "InputRecord", "a", None),
        (2, "BadLine", None, "invalid_json"),
        (3, "BadLine", "b", "invalid_field"),
        (4, "InputRecord", "c", None),
        (6, "BadLine", None, "invalid_json"),
        (7, "InputRecord", "d", None),
    ]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": 2, "top_logprobs": 3}, "top_logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": "high"}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
    ],
)
def test_bad_penalties_and_logprobs_name_the_field(extra: dict[str, Any], param: str) -> None:
    """Out-of-range or ill-typed penalties, min_p and logprobs are invalid_field errors naming it."""
    bad = bad_line({"id": "q", "prompt": "p", **extra})
    assert (bad.code, bad.param) == ("invalid_field", param), bad


def test_openai_endpoints_take_their_own_logprobs_spelling() -> None:
    """Chat wants logprobs: true (+ top_logprobs); completions want logprobs: k and no top_logprobs."""
    chat = openai_line("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": 3})
    bad = bad_line(chat)
    assert (bad.param, bad.openai) == ("logprobs", True) and "true or false" in bad.message
    cmpl = openai_line("/v1/completions", {"prompt": "x", "logprobs": True, "top_logprobs": 2})
    assert bad_line(cmpl).param == "top_logprobs"
    assert bad_line(openai_line("/v1/completions", {"prompt": "x", "logprobs": True})).param == "logprobs"


def test_min_tokens_is_read_and_checked() -> None:
    rec = parse_obj({"prompt": "p", "min_tokens": 5})
    assert isinstance(rec, InputRecord) and rec.sampling.min_tokens == 5
    assert bad_line({"id": "q", "prompt": "p", "min_tokens": -1}).param == "min_tokens"


@pytest.mark.parametrize("bias", [{"x": 1}, {"5": 101}, {"5": "high"}, [5, 1]])
def test_bad_logit_bias_is_an_invalid_field(bias: Any) -> None:
    assert bad_line({"id": "q", "prompt": "p", "logit_bias": bias}).param == "logit_bias"


def test_logit_bias_is_read_as_sorted_pairs() -> None:
    rec = parse_obj({"prompt": "p", "logit_bias": {"17": -100, "3": 2.5}})
    assert isinstance(rec, InputRecord) and rec.sampling.logit_bias == ((3, 2.5), (17, -100.0))


def test_invalid_json_says_where_in_the_line_words_a_user_can_find() -> None:
    """The parser's own words ("invalid literal, expected 'null'") are not shown: the character
    where the line stops being JSON and the text there are."""
    bad = bad_line(None, 7, raw=b'{"id": "q7", prompt: "hi"}\n')
    assert bad.describe() == "line 7: not valid JSON at character 14, near 'prompt: \"hi\"}'"
    cut = bad_line(None, 3, raw=b'{"id": "q3", "prompt": "hi"\n')
    assert cut.message == "not valid JSON: the line ends before its JSON does"
