"""The JSONL reader: line formats, sampling overrides, default ids, and one BadLine per bad line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from batchllm_cli.errors import InputError
from batchllm_cli.io import reader
from batchllm_cli.io.fields import NO_OVERRIDES, SamplingOverrides
from batchllm_cli.io.reader import BadLine, InputRecord, parse_line, read_ids, read_input, read_lines
from batchllm_cli.types import SamplingParams

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _parse(obj: Any, line: int = 1) -> InputRecord | BadLine | None:
    return parse_line(_line(obj), line)


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def _bad(obj: Any, line: int = 1, *, raw: bytes | None = None) -> BadLine:
    rec = parse_line(raw, line) if raw is not None else _parse(obj, line)
    assert isinstance(rec, BadLine), rec
    assert rec.line == line
    return rec


def _openai(url: str, body: dict[str, Any], custom_id: Any = "c1", method: str = "POST") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


# --- the three line formats -------------------------------------------------------------------


def test_plain_line() -> None:
    """{"id", "prompt"} becomes a plain record with that prompt and no sampling overrides."""
    rec = _parse({"id": "q1", "prompt": "Tell me a story"}, line=4)
    assert rec == InputRecord(4, "q1", "plain", "Tell me a story", None, NO_OVERRIDES)


def test_chat_line() -> None:
    """{"id", "messages"} becomes a chat record with the messages in order."""
    rec = _parse({"id": "q2", "messages": CHAT})
    assert isinstance(rec, InputRecord)
    assert (rec.kind, rec.id, rec.prompt) == ("chat", "q2", None)
    assert rec.messages == tuple(CHAT)


def test_chat_text_parts_are_joined_and_developer_is_system() -> None:
    """Content given as text parts is joined; OpenAI's role "developer" reads as "system"."""
    msgs = [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
    ]
    rec = _parse({"id": "q", "messages": msgs})
    assert isinstance(rec, InputRecord)
    assert rec.messages == ({"role": "system", "content": "Rules."}, {"role": "user", "content": "Hello"})


def test_openai_chat_line_with_sampling_in_body() -> None:
    """An OpenAI batch line to /v1/chat/completions: custom_id is the id, sampling comes from the
    body, and max_completion_tokens is the body's max_tokens."""
    body = {"model": "x", "messages": CHAT, "max_completion_tokens": 7, "temperature": 0.3, "seed": 11}
    rec = _parse(_openai("/v1/chat/completions", body, custom_id="req-9"), line=2)
    assert isinstance(rec, InputRecord)
    assert (rec.line, rec.id, rec.kind, rec.prompt) == (2, "req-9", "openai_chat", None)
    assert rec.messages == tuple(CHAT)
    assert rec.sampling == SamplingOverrides(max_tokens=7, temperature=0.3, seed=11)


def test_openai_chat_line_max_tokens_when_no_max_completion_tokens() -> None:
    """An OpenAI chat body with the older max_tokens field still limits the output."""
    rec = _parse(_openai("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3}))
    assert isinstance(rec, InputRecord)
    assert rec.sampling.max_tokens == 3


def test_openai_completion_line_with_sampling_in_body() -> None:
    """An OpenAI batch line to /v1/completions: a prompt record with the body's sampling."""
    body = {"model": "x", "prompt": "Once upon", "max_tokens": 5, "top_p": 0.9, "stop": ["\n"]}
    rec = _parse(_openai("/v1/completions", body, custom_id=42))
    assert isinstance(rec, InputRecord)
    assert (rec.id, rec.kind, rec.prompt, rec.messages) == ("42", "openai_completion", "Once upon", None)
    assert rec.sampling == SamplingOverrides(max_tokens=5, top_p=0.9, stop=("\n",))


def test_openai_completion_prompt_list_of_one() -> None:
    """A completion prompt given as a list of one string is that string; more is refused."""
    rec = _parse(_openai("/v1/completions", {"prompt": ["only"]}))
    assert isinstance(rec, InputRecord) and rec.prompt == "only"
    bad = _bad(_openai("/v1/completions", {"prompt": ["a", "b"]}))
    assert (bad.code, bad.param, bad.openai) == ("unsupported_field", "prompt", True)


# --- sampling overrides ------------------------------------------------------------------------


def test_per_line_sampling_overrides_apply_over_job_defaults() -> None:
    """Each sampling field a line sets replaces the job default; the fields it leaves out keep it."""
    rec = _parse({"prompt": "p", "max_tokens": 9, "temperature": 0.7, "top_k": 5, "stop": "END"})
    assert isinstance(rec, InputRecord)
    assert rec.sampling == SamplingOverrides(max_tokens=9, temperature=0.7, top_k=5, stop=("END",))
    defaults = SamplingParams(max_tokens=100, temperature=0.0, top_p=0.5, seed=3)
    got = rec.sampling.apply(defaults)
    assert (got.max_tokens, got.temperature, got.top_k, got.stop) == (9, 0.7, 5, ("END",))
    assert (got.top_p, got.seed) == (0.5, 3)


def test_no_sampling_fields_means_job_defaults() -> None:
    """A line without sampling fields (or with them null) runs with the job's defaults unchanged."""
    defaults = SamplingParams(max_tokens=12, temperature=0.4)
    for obj in ({"prompt": "p"}, {"prompt": "p", "temperature": None, "max_tokens": None}):
        rec = _parse(obj)
        assert isinstance(rec, InputRecord)
        assert rec.sampling.apply(defaults) == defaults


def test_top_k_minus_one_means_no_cut() -> None:
    """top_k -1 (vLLM's "off") reads as 0, batchllm's "no top-k cut"."""
    rec = _parse({"prompt": "p", "top_k": -1})
    assert isinstance(rec, InputRecord) and rec.sampling.top_k == 0


def test_neutral_values_of_unsupported_options_are_accepted() -> None:
    """Options batchllm does not implement are fine when set to their "off" value."""
    rec = _parse({"prompt": "p", "n": 1, "stream": False, "presence_penalty": 0, "logprobs": False})
    assert isinstance(rec, InputRecord)


# --- ids, blank lines, BOM ---------------------------------------------------------------------


def test_ids_default_to_zero_based_line_number(tmp_path: Path) -> None:
    """A line without an id answers to its 0-based line number (blank lines count as lines)."""
    path = _write(tmp_path / "in.jsonl", [
        _line({"prompt": "a"}),
        _line({"id": "named", "prompt": "b"}),
        b"\n",
        _line({"messages": CHAT}),
        _line({"id": 17, "prompt": "c"}),
        _line({"id": None, "prompt": "d"}),
    ])
    recs = list(read_input(path))
    assert [(r.line, r.id) for r in recs] == [(1, "0"), (2, "named"), (4, "3"), (5, "17"), (6, "5")]
    assert list(read_ids(path)) == [(1, "0"), (2, "named"), (4, "3"), (5, "17"), (6, "5")]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Empty and whitespace-only lines yield nothing, and a missing final newline is fine."""
    path = _write(tmp_path / "in.jsonl", [
        b"\n", b"   \t \n", _line({"id": "a", "prompt": "x"}), b"\r\n", b"\n", b'{"id": "b", "prompt": "y"}',
    ])
    recs = list(read_input(path))
    assert [(r.line, r.id) for r in recs] == [(3, "a"), (6, "b")]
    assert all(isinstance(r, InputRecord) for r in recs)


def test_utf8_bom_on_the_first_line(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark before the first line is ignored."""
    path = _write(tmp_path / "in.jsonl", [b"\xef\xbb\xbf" + _line({"id": "a", "prompt": "x"}), _line({"prompt": "y"})])
    recs = list(read_input(path))
    assert [type(r) for r in recs] == [InputRecord, InputRecord]
    assert [(r.id, r.prompt) for r in recs] == [("a", "x"), ("1", "y")]


def test_non_ascii_text_is_kept(tmp_path: Path) -> None:
    """UTF-8 prompts (accents, CJK, emoji) come through unchanged."""
    text = "Größe 大小 🙂"
    path = _write(tmp_path / "in.jsonl", [json.dumps({"id": "u", "prompt": text}, ensure_ascii=False).encode() + b"\n"])
    (rec,) = read_input(path)
    assert isinstance(rec, InputRecord) and rec.prompt == text


# --- bad lines ---------------------------------------------------------------------------------


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
    bad = _bad(None, 7, raw=raw)
    assert (bad.code, bad.id, bad.openai) == ("invalid_json", None, False)
    assert "not valid JSON" in bad.message
    assert bad.describe().startswith("line 7: ")


@pytest.mark.parametrize("obj", [[1, 2, 3], "a string", 5, None, True])
def test_non_object_line_is_a_bad_line(obj: Any) -> None:
    """A JSON value that is not an object is refused, saying what it is."""
    bad = _bad(obj, 3)
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
    bad = _bad({"id": "q", "prompt": "p", **extra}, 5)
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
    bad = _bad({"id": "q", "messages": messages})
    assert (bad.code, bad.param) == ("invalid_field", param)


def test_non_text_content_part_is_unsupported() -> None:
    """An image (or other non-text) content part is refused as unsupported."""
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    bad = _bad({"id": "q", "messages": msgs})
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
    bad = _bad(obj)
    assert (bad.code, bad.id) == ("empty_prompt", "q")


def test_prompt_of_wrong_type() -> None:
    """A prompt that is not a string is an invalid_field on prompt."""
    bad = _bad({"id": "q", "prompt": ["a"]})
    assert (bad.code, bad.param) == ("invalid_field", "prompt")


@pytest.mark.parametrize(
    "obj, why",
    [
        ({"id": "q", "prompt": "a", "messages": CHAT}, "both"),
        ({"id": "q"}, "neither"),
        ({"id": "q", "temperature": 0.5}, "neither"),
    ],
)
def test_needs_exactly_one_of_prompt_and_messages(obj: dict[str, Any], why: str) -> None:
    """A line with both prompt and messages, or neither, is a missing_prompt saying which."""
    bad = _bad(obj)
    assert (bad.code, bad.id) == ("missing_prompt", "q")
    assert why in bad.message


@pytest.mark.parametrize(
    "extra, param",
    [({"n": 2}, "n"), ({"best_of": 3}, "best_of"), ({"logprobs": True}, "logprobs"), ({"stream": True}, "stream")],
)
def test_unsupported_options_are_refused(extra: dict[str, Any], param: str) -> None:
    """An option batchllm does not implement, set to a value that changes the output, is refused."""
    bad = _bad({"id": "q", "prompt": "p", **extra})
    assert (bad.code, bad.param) == ("unsupported_field", param)
    assert "not supported" in bad.message


@pytest.mark.parametrize(
    "typo, meant", [("max_token", "max_tokens"), ("temprature", "temperature"), ("promt", "prompt")]
)
def test_misspelt_field_is_refused_with_a_suggestion(typo: str, meant: str) -> None:
    """A misspelt known field is an unknown_field that suggests the right name."""
    obj = {"id": "q", "prompt": "p", typo: 3}
    bad = _bad(obj)
    assert (bad.code, bad.param) == ("unknown_field", typo)
    assert f"did you mean {meant!r}" in bad.message


def test_unrelated_extra_field_is_ignored() -> None:
    """A field far from every known name (user metadata) does not make the line bad."""
    rec = _parse({"id": "q", "prompt": "p", "source": "wiki", "category": 3})
    assert isinstance(rec, InputRecord) and rec.prompt == "p"


@pytest.mark.parametrize("rid", ["", True, 1.5, [1], {"a": 1}])
def test_unusable_id(rid: Any) -> None:
    """An id that is not a non-empty string or an integer is an invalid_field on id, id unknown."""
    bad = _bad({"id": rid, "prompt": "p"})
    assert (bad.code, bad.param, bad.id) == ("invalid_field", "id", None)


@pytest.mark.parametrize(
    "obj, code, param",
    [
        (_openai("/v1/embeddings", {"input": "x"}), "invalid_url", "url"),
        (_openai("/v1/responses", {"input": "x"}), "invalid_url", "url"),
        ({"custom_id": "c1", "method": "POST", "body": {"prompt": "x"}}, "invalid_url", "url"),
        (_openai("/v1/completions", {"prompt": "x"}, method="GET"), "invalid_method", "method"),
        (_openai("/v1/chat/completions", "not an object"), "invalid_field", "body"),  # type: ignore[arg-type]
        (_openai("/v1/chat/completions", {"messages": CHAT, "n": 2}), "unsupported_field", "n"),
        (_openai("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": "5"}), "invalid_field",
         "max_completion_tokens"),
        (_openai("/v1/chat/completions", {"messages": CHAT, "frobnicate": 1}), "unknown_field", "frobnicate"),
        (_openai("/v1/completions", {"prompt": "x", "max_completion_tokens": 3}), "unknown_field",
         "max_completion_tokens"),
        (_openai("/v1/completions", {"prompt": ""}), "empty_prompt", "prompt"),
        (_openai("/v1/chat/completions", {"model": "x"}), "invalid_field", "messages"),
        (_openai("/v1/chat/completions", {"prompt": "x"}), "unknown_field", "prompt"),
    ],
)
def test_bad_openai_line_is_answered_as_a_400(obj: dict[str, Any], code: str, param: str) -> None:
    """What the OpenAI endpoint would refuse is a BadLine flagged openai, keeping the custom_id."""
    bad = _bad(obj, 2)
    assert (bad.code, bad.param, bad.id, bad.openai) == (code, param, "c1", True)


@pytest.mark.parametrize("cid", [None, "", False])
def test_openai_line_without_usable_custom_id(cid: Any) -> None:
    """An OpenAI line whose custom_id is missing or unusable cannot be answered as a 400 (nothing
    to name it by): it is a plain invalid_field on custom_id."""
    obj = _openai("/v1/completions", {"prompt": "x"}, custom_id=cid)
    if cid is None:
        del obj["custom_id"]
    bad = _bad(obj)
    assert (bad.code, bad.param, bad.id, bad.openai) == ("invalid_field", "custom_id", None, False)


def test_every_bad_line_is_reported_and_good_lines_still_read(tmp_path: Path) -> None:
    """In a file, each bad line yields one BadLine with its own line number, between good records."""
    path = _write(tmp_path / "in.jsonl", [
        _line({"id": "a", "prompt": "x"}),
        b"{oops\n",
        _line({"id": "b", "prompt": "y", "max_tokens": "ten"}),
        _line({"id": "c", "messages": CHAT}),
        b"\n",
        _line([1]),
        _line({"id": "d", "prompt": "z"}),
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


# --- overlong lines ----------------------------------------------------------------------------


class _Recorder(io.BytesIO):
    """A BytesIO that remembers the largest read it was asked for and the largest it returned."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest_request = 0
        self.largest_returned = 0

    def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.largest_request = max(self.largest_request, 2**62 if size is None or size < 0 else size)
        out = super().readline(size)
        self.largest_returned = max(self.largest_returned, len(out))
        return out


def test_overlong_line_is_skipped_without_holding_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line over MAX_LINE_BYTES becomes None (line_too_long) and is read past in small chunks:
    no read is larger than the limit, and the following lines keep their numbers."""
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(reader, "_SKIP_CHUNK", 64)
    long = b'{"id": "huge", "prompt": "' + b"x" * 50_000 + b'"}\n'
    at_limit = b'{"prompt": "' + b"y" * (1000 - 14) + b'"}\n'
    assert len(at_limit) == 1001  # 1000 bytes and the newline: just allowed
    f = _Recorder(_line({"id": "a", "prompt": "x"}) + long + at_limit + _line({"id": "b", "prompt": "z"}) + long[:-1])
    got = [(n, raw if raw is None else len(raw)) for n, raw in read_lines(f)]
    assert got == [(1, len(_line({"id": "a", "prompt": "x"}))), (2, None), (3, 1001),
                   (4, len(_line({"id": "b", "prompt": "z"}))), (5, None)]
    assert f.largest_request <= 1001
    assert f.largest_returned <= 1001


def test_overlong_line_in_a_file_is_a_bad_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_input reports an overlong line as line_too_long (id unknown) and reads on; read_ids
    gives it no id."""
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 200)
    path = _write(tmp_path / "in.jsonl", [
        _line({"id": "a", "prompt": "x"}),
        _line({"id": "huge", "prompt": "x" * 5000}),
        _line({"id": "b", "prompt": "y"}),
    ])
    recs = list(read_input(path))
    assert [(r.line, r.id) for r in recs] == [(1, "a"), (2, None), (3, "b")]
    assert isinstance(recs[1], BadLine) and recs[1].code == "line_too_long"
    assert list(read_ids(path)) == [(1, "a"), (2, None), (3, "b")]


# --- opening the input -------------------------------------------------------------------------


def test_missing_input_is_an_input_error(tmp_path: Path) -> None:
    """A missing input file is an InputError that says so (not a FileNotFoundError)."""
    with pytest.raises(InputError, match="does not exist"):
        list(read_input(tmp_path / "nope.jsonl"))


def test_directory_input_is_an_input_error(tmp_path: Path) -> None:
    """A directory given as input is an InputError."""
    with pytest.raises(InputError, match="is a directory"):
        list(read_ids(tmp_path))
