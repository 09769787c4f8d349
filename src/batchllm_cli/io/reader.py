"""The JSONL reader: each input line becomes a checked InputRecord or a BadLine, as a stream.

Line formats (DESIGN.md, "Input and output contract"):
- plain:  {"id": "q1", "prompt": "text", ...sampling}
- chat:   {"id": "q2", "messages": [{"role": "user", "content": "..."}], ...sampling}
- OpenAI batch: {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions" or
  "/v1/completions", "body": {...sampling in the body}}
A line without an id gets its 0-based line number as id. Blank lines are skipped. Nothing is
kept between lines: the reader's memory does not grow with the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal

import orjson

from batchllm_cli.errors import InputError
from batchllm_cli.io import fields as F
from batchllm_cli.io.fields import FieldError, SamplingOverrides

Kind = Literal["plain", "chat", "openai_chat", "openai_completion"]
OPENAI_URLS: dict[str, Kind] = {"/v1/chat/completions": "openai_chat", "/v1/completions": "openai_completion"}
OPENAI_KEYS = ("custom_id", "method", "url", "body")
PLAIN_KEYS = ("id", "prompt", "messages", "n", *F.SAMPLING_FIELDS)
_OPENAI_NAMES = frozenset(OPENAI_KEYS)
_PLAIN_NAMES = frozenset(PLAIN_KEYS)
CHAT_BODY_KEYS = ("model", "messages", "max_completion_tokens", "n", "user", "metadata", "store", "service_tier")
COMPLETION_BODY_KEYS = ("model", "prompt", "n", "user")

# The longest line read: 4 MiB is about 8x the text of a 128k-token context (the largest any
# supported model has) with room for JSON escapes; a longer line cannot fit any model, and
# reading it whole could exhaust memory.
MAX_LINE_BYTES = 4 * 2**20
_SKIP_CHUNK = 2**20


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One usable input line: what to prompt with and how to sample."""

    line: int  # 1-based line number in the input file
    id: str  # the user's id (custom_id for OpenAI lines), else the 0-based line number
    kind: Kind
    prompt: str | None  # plain and openai_completion
    messages: tuple[dict[str, str], ...] | None  # chat and openai_chat
    sampling: SamplingOverrides
    n: int | None = None  # samples of the prompt to answer with; None = the job default


@dataclass(frozen=True, slots=True)
class BadLine:
    """One unusable input line: where, why, and how its error record is shaped."""

    line: int
    id: str | None  # None when the line's id could not be read
    code: str  # invalid_json, invalid_field, empty_prompt, unknown_field, unsupported_field, ...
    message: str
    param: str | None = None  # the field at fault, when there is one
    openai: bool = False  # an OpenAI batch line: answered with a status-400 response

    def describe(self) -> str:
        """One line for a terminal: `line 7 (id 'q7'): message`."""
        who = f" (id {self.id!r})" if self.id is not None else ""
        return f"line {self.line}{who}: {self.message}"


def parse_line(raw: bytes, line: int) -> InputRecord | BadLine | None:
    """The record of one input line (its newline may be on it); None for a blank line."""
    if not raw or raw.isspace():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).splitlines()[0]
        return BadLine(line, None, "invalid_json", f"not valid JSON ({reason})")
    if not isinstance(obj, dict):
        return BadLine(line, None, "invalid_json", f"a line must be a JSON object, got a {type(obj).__name__}")
    rid = line_id(obj, line)
    if not _OPENAI_NAMES.isdisjoint(obj):
        return _openai(obj, line, rid)
    try:
        if rid is None:
            F.record_id(obj["id"], "id")  # raises the reason
        return _plain(obj, line, rid)  # type: ignore[arg-type]
    except FieldError as exc:
        return BadLine(line, rid, exc.code, str(exc), exc.param)


def line_id(obj: Any, line: int) -> str | None:
    """The id a parsed line answers to: its custom_id (OpenAI lines) or id, else its 0-based
    line number; None when that field is there but unusable (or the line is not an object)."""
    if not isinstance(obj, dict):
        return None
    if _OPENAI_NAMES.isdisjoint(obj):
        value = obj.get("id")
        if value is None:
            return str(line - 1)
    else:
        value = obj.get("custom_id")
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _plain(obj: dict[str, Any], line: int, rid: str) -> InputRecord:
    if not _PLAIN_NAMES.issuperset(obj):
        F.check_typos(obj, PLAIN_KEYS)
    F.check_unsupported(obj)
    has_prompt, has_messages = obj.get("prompt") is not None, obj.get("messages") is not None
    if has_prompt == has_messages:
        why = "both" if has_prompt else "neither"
        raise FieldError(None, f"a line needs exactly one of prompt or messages, it has {why}", "missing_prompt")
    sampling, n = F.sampling_overrides(obj), F.sample_count(obj)
    if has_prompt:
        return InputRecord(line, rid, "plain", F.prompt_text(obj["prompt"]), None, sampling, n)
    return InputRecord(line, rid, "chat", None, F.messages(obj["messages"]), sampling, n)


def _openai(obj: dict[str, Any], line: int, rid: str | None) -> InputRecord | BadLine:
    """An OpenAI batch line; what the endpoint would refuse becomes a 400 BadLine."""
    if rid is None:
        try:
            F.record_id(obj.get("custom_id"), "custom_id")
        except FieldError as exc:
            return BadLine(line, None, "invalid_field", str(exc), "custom_id")
    try:
        method = obj.get("method", "POST")
        if method != "POST":
            raise FieldError("method", f"method must be POST, got {method!r}", "invalid_method")
        url = obj.get("url")
        kind = OPENAI_URLS.get(url) if isinstance(url, str) else None
        if kind is None:
            served = " or ".join(OPENAI_URLS)
            raise FieldError("url", f"url {url!r} is not served here: use {served}", "invalid_url")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise FieldError("body", "body must be a JSON object with the request", "invalid_field")
        F.check_unsupported(body)
        if kind == "openai_chat":
            _no_unknown(body, CHAT_BODY_KEYS)
            key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            sampling = F.sampling_overrides(body, key, "chat")
            messages = F.messages(body.get("messages"))
            return InputRecord(line, rid, kind, None, messages, sampling, F.sample_count(body))
        _no_unknown(body, COMPLETION_BODY_KEYS)
        sampling = F.sampling_overrides(body, logprobs_style="completion")
        prompt = _completion_prompt(body.get("prompt"))
        return InputRecord(line, rid, kind, prompt, None, sampling, F.sample_count(body))
    except FieldError as exc:
        return BadLine(line, rid, exc.code, str(exc), exc.param, openai=True)


def _no_unknown(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    known = (*allowed, *F.SAMPLING_FIELDS, *F.NEUTRAL_VALUES)
    for name in body:
        if name not in known:
            raise FieldError(name, f"unrecognized request argument {name!r}", "unknown_field")


def _completion_prompt(value: Any) -> str:
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str):
            return F.prompt_text(value[0])
        raise FieldError(
            "prompt", "prompt must be one string (token-id and multi-prompt lists are not supported)",
            "unsupported_field",
        )
    return F.prompt_text(value)


def read_lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line with its newline) of a binary stream; None for an overlong
    line (its bytes are skipped, never held)."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark some editors write
        yield number, raw  # with its newline: JSON allows trailing whitespace


def read_input(path: str | Path) -> Iterator[InputRecord | BadLine]:
    """Every non-blank line of the JSONL file `path`, parsed, in file order."""
    with open_input(path) as f:
        for number, raw in read_lines(f):
            if raw is None:
                yield BadLine(number, None, "line_too_long", f"the line is longer than {MAX_LINE_BYTES >> 20} MiB")
                continue
            record = parse_line(raw, number)
            if record is not None:
                yield record


def read_ids(path: str | Path) -> Iterator[tuple[int, str | None]]:
    """(line number, line_id) of every non-blank line: the keys of a job without checking the
    rest of each line (the first, cheap pass over a large input)."""
    with open_input(path) as f:
        for number, raw in read_lines(f):
            if raw is None:
                yield number, None
            elif raw and not raw.isspace():
                try:
                    yield number, line_id(orjson.loads(raw), number)
                except orjson.JSONDecodeError:
                    yield number, None


def open_input(path: str | Path) -> BinaryIO:
    """The input file opened for reading, or an InputError saying why it cannot be."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(f"input {p} is a directory: give a JSONL file")
        return io.open(p, "rb", buffering=2**20)
    except FileNotFoundError:
        raise InputError(f"input file {p} does not exist") from None
    except PermissionError:
        raise InputError(f"input file {p} cannot be read (permission denied)") from None
    except OSError as exc:
        raise InputError(f"input file {p} cannot be read: {exc.strerror or exc}") from None
