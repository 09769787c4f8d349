"""The JSONL reader: the three line formats, sampling overrides, default ids, blank lines and BOM,
overlong lines read without holding them, opening the input. Bad lines: test_reader_bad_lines.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from batchllm_cli.errors import InputError
from batchllm_cli.io import reader
from batchllm_cli.io.fields import NO_OVERRIDES, SamplingOverrides
from batchllm_cli.io.reader import BadLine, InputRecord, read_ids, read_input, read_lines
from batchllm_cli.types import SamplingParams
from io_helpers import READER_CHAT, bad_line, json_line, openai_line, parse_obj, write_lines


# --- the three line formats -------------------------------------------------------------------


def test_plain_line() -> None:
    """{"id", "prompt"} becomes a plain record with that prompt and no sampling overrides."""
    rec = parse_obj({"id": "q1", "prompt": "Tell me a story"}, line=4)
    assert rec == InputRecord(4, "q1", "plain", "Tell me a story", None, NO_OVERRIDES)


def test_chat_line() -> None:
    """{"id", "messages"} becomes a chat record with the messages in order."""
    rec = parse_obj({"id": "q2", "messages": READER_CHAT})
    assert isinstance(rec, InputRecord)
    assert (rec.kind, rec.id, rec.prompt) == ("chat", "q2", None)
    assert rec.messages == tuple(READER_CHAT)


def test_chat_text_parts_are_joined_and_developer_is_system() -> None:
    """Content given as text parts is joined; OpenAI's role "developer" reads as "system"."""
    msgs = [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
    ]
    rec = parse_obj({"id": "q", "messages": msgs})
    assert isinstance(rec, InputRecord)
    assert rec.messages == ({"role": "system", "content": "Rules."}, {"role": "user", "content": "Hello"})


def test_openai_chat_line_with_sampling_in_body() -> None:
    """An OpenAI batch line to /v1/chat/completions: custom_id is the id, sampling comes from the
    body, and max_completion_tokens is the body's max_tokens."""
    body = {"model": "x", "messages": READER_CHAT, "max_completion_tokens": 7, "temperature": 0.3, "seed": 11}
    rec = parse_obj(openai_line("/v1/chat/completions", body, custom_id="req-9"), line=2)
    assert isinstance(rec, InputRecord)
    assert (rec.line, rec.id, rec.kind, rec.prompt) == (2, "req-9", "openai_chat", None)
    assert rec.messages == tuple(READER_CHAT)
    assert rec.sampling == SamplingOverrides(max_tokens=7, temperature=0.3, seed=11)


def test_openai_chat_line_max_tokens_when_no_max_completion_tokens() -> None:
    """An OpenAI chat body with the older max_tokens field still limits the output."""
    rec = parse_obj(openai_line("/v1/chat/completions", {"messages": READER_CHAT, "max_tokens": 3}))
    assert isinstance(rec, InputRecord)
    assert rec.sampling.max_tokens == 3


def test_openai_completion_line_with_sampling_in_body() -> None:
    """An OpenAI batch line to /v1/completions: a prompt record with the body's sampling."""
    body = {"model": "x", "prompt": "Once upon", "max_tokens": 5, "top_p": 0.9, "stop": ["\n"]}
    rec = parse_obj(openai_line("/v1/completions", body, custom_id=42))
    assert isinstance(rec, InputRecord)
    assert (rec.id, rec.kind, rec.prompt, rec.messages) == (42, "openai_completion", "Once upon", None)
    assert rec.sampling == SamplingOverrides(max_tokens=5, top_p=0.9, stop=("\n",))


def test_openai_completion_prompt_list_of_one() -> None:
    """A completion prompt given as a list of one string is that string; more is refused."""
    rec = parse_obj(openai_line("/v1/completions", {"prompt": ["only"]}))
    assert isinstance(rec, InputRecord) and rec.prompt == "only"
    bad = bad_line(openai_line("/v1/completions", {"prompt": ["a", "b"]}))
    assert (bad.code, bad.param, bad.openai) == ("unsupported_field", "prompt", True)


# --- sampling overrides ------------------------------------------------------------------------


def test_per_line_sampling_overrides_apply_over_job_defaults() -> None:
    """Each sampling field a line sets replaces the job default; the fields it leaves out keep it."""
    rec = parse_obj({"prompt": "p", "max_tokens": 9, "temperature": 0.7, "top_k": 5, "stop": "END"})
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
        rec = parse_obj(obj)
        assert isinstance(rec, InputRecord)
        assert rec.sampling.apply(defaults) == defaults


def test_top_k_minus_one_means_no_cut() -> None:
    """top_k -1 (vLLM's "off") reads as 0, batchllm's "no top-k cut"."""
    rec = parse_obj({"prompt": "p", "top_k": -1})
    assert isinstance(rec, InputRecord) and rec.sampling.top_k == 0


def test_neutral_values_of_unsupported_options_are_accepted() -> None:
    """Options batchllm does not implement are fine when set to their "off" value."""
    rec = parse_obj({"prompt": "p", "n": 1, "stream": False, "echo": False, "tools": []})
    assert isinstance(rec, InputRecord)


# --- ids, blank lines, BOM ---------------------------------------------------------------------


def test_ids_default_to_zero_based_line_number(tmp_path: Path) -> None:
    """A line without an id answers to its 0-based line number (blank lines count as lines)."""
    path = write_lines(tmp_path / "in.jsonl", [
        json_line({"prompt": "a"}),
        json_line({"id": "named", "prompt": "b"}),
        b"\n",
        json_line({"messages": READER_CHAT}),
        json_line({"id": 17, "prompt": "c"}),
        json_line({"id": None, "prompt": "d"}),
    ])
    recs = list(read_input(path))
    # an integer id stays an integer (17 and "17" are two ids)
    assert [(r.line, r.id) for r in recs] == [(1, "0"), (2, "named"), (4, "3"), (5, 17), (6, "5")]
    assert list(read_ids(path)) == [(1, "0"), (2, "named"), (4, "3"), (5, 17), (6, "5")]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Empty and whitespace-only lines yield nothing, and a missing final newline is fine."""
    path = write_lines(tmp_path / "in.jsonl", [
        b"\n", b"   \t \n", json_line({"id": "a", "prompt": "x"}), b"\r\n", b"\n", b'{"id": "b", "prompt": "y"}',
    ])
    recs = list(read_input(path))
    assert [(r.line, r.id) for r in recs] == [(3, "a"), (6, "b")]
    assert all(isinstance(r, InputRecord) for r in recs)


def test_utf8_bom_on_the_first_line(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark before the first line is ignored."""
    path = write_lines(tmp_path / "in.jsonl", [b"\xef\xbb\xbf" + json_line({"id": "a", "prompt": "x"}), json_line({"prompt": "y"})])
    recs = list(read_input(path))
    assert [type(r) for r in recs] == [InputRecord, InputRecord]
    assert [(r.id, r.prompt) for r in recs] == [("a", "x"), ("1", "y")]


def test_non_ascii_text_is_kept(tmp_path: Path) -> None:
    """UTF-8 prompts (accents, CJK, emoji) come through unchanged."""
    text = "Größe 大小 🙂"
    path = write_lines(tmp_path / "in.jsonl", [json.dumps({"id": "u", "prompt": text}, ensure_ascii=False).encode() + b"\n"])
    (rec,) = read_input(path)
    assert isinstance(rec, InputRecord) and rec.prompt == text


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
    f = _Recorder(json_line({"id": "a", "prompt": "x"}) + long + at_limit + json_line({"id": "b", "prompt": "z"}) + long[:-1])
    got = [(n, raw if raw is None else len(raw)) for n, raw in read_lines(f)]
    assert got == [(1, len(json_line({"id": "a", "prompt": "x"}))), (2, None), (3, 1001),
                   (4, len(json_line({"id": "b", "prompt": "z"}))), (5, None)]
    assert f.largest_request <= 1001
    assert f.largest_returned <= 1001


def test_overlong_line_in_a_file_is_a_bad_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_input reports an overlong line as line_too_long (id unknown) and reads on; read_ids
    gives it no id."""
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 200)
    path = write_lines(tmp_path / "in.jsonl", [
        json_line({"id": "a", "prompt": "x"}),
        json_line({"id": "huge", "prompt": "x" * 5000}),
        json_line({"id": "b", "prompt": "y"}),
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


# --- penalties, min_p and logprobs ---------------------------------------------------------------


CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"


@pytest.mark.parametrize(
    "obj, want",
    [
        ({"prompt": "p", "logprobs": 3}, 3),
        ({"prompt": "p", "logprobs": True, "top_logprobs": 5}, 5),
        ({"prompt": "p", "logprobs": True}, 0),
        ({"prompt": "p", "logprobs": 0}, 0),
        ({"prompt": "p", "logprobs": False}, None),  # explicitly off
        ({"prompt": "p"}, 7),  # the job default
        (openai_line(CHAT_URL, {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 2}), 2),
        (openai_line(COMPLETIONS_URL, {"prompt": "x", "logprobs": 4}), 4),
    ],
)
def test_logprobs_spellings(obj: dict, want: int | None) -> None:
    """vLLM's `logprobs: k`, OpenAI chat's `logprobs: true` + `top_logprobs: k`, OpenAI completions'
    `logprobs: k`; a line's explicit false wins over a job default."""
    rec = parse_obj(obj)
    assert isinstance(rec, InputRecord), rec
    assert rec.sampling.apply(SamplingParams(logprobs=7)).logprobs == want


def test_penalties_and_min_p_are_read() -> None:
    rec = parse_obj({"prompt": "p", "presence_penalty": 0.5, "frequency_penalty": -1, "repetition_penalty": 1.2, "min_p": 0.05})
    assert isinstance(rec, InputRecord)
    params = rec.sampling.apply(SamplingParams())
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty, params.min_p) == (0.5, -1.0, 1.2, 0.05)
    assert params.has_penalties and not SamplingParams().has_penalties


def test_n_is_read_from_each_line_format() -> None:
    assert parse_obj({"prompt": "p", "n": 4}).n == 4
    assert parse_obj({"messages": [{"role": "user", "content": "x"}]}).n is None  # the job default
    assert parse_obj(openai_line(CHAT_URL, {"messages": [{"role": "user", "content": "x"}], "n": 2})).n == 2
    assert parse_obj(openai_line(COMPLETIONS_URL, {"prompt": "x", "n": 3})).n == 3
