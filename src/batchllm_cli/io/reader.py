"""The JSONL reader: each input line becomes a checked InputRecord or a BadLine, as a stream.

Line formats (DESIGN.md, "Input and output contract"):
- plain:  {"id": "q1", "prompt": "text", ...sampling}
- chat:   {"id": "q2", "messages": [{"role": "user", "content": "..."}], ...sampling}
- OpenAI batch: {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions" or
  "/v1/completions", "body": {...sampling in the body}}
A line without an id gets its 0-based line number as id; an id keeps its JSON type (5 and "5"
are two ids). Blank lines are skipped. A file whose first JSON object is an OpenAI batch line
is an OpenAI batch file: every line of it is read as one (a line that is not becomes a status
400 record), so that every output line is a batch envelope. Nothing is kept between lines: the
reader's memory does not grow with the file.
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
RecordId = str | int  # an id as the input line gave it
OPENAI_URLS: dict[str, Kind] = {"/v1/chat/completions": "openai_chat", "/v1/completions": "openai_completion"}
OPENAI_KEYS = ("custom_id", "method", "url", "body")
PLAIN_KEYS = ("id", "prompt", "messages", "n", "system", *F.SAMPLING_FIELDS, *F.ALIASES, *F.IGNORED_FIELDS)
_OPENAI_NAMES = frozenset(OPENAI_KEYS)
_PLAIN_NAMES = frozenset(PLAIN_KEYS)
CHAT_BODY_KEYS = ("model", "messages", "max_completion_tokens", "n", *F.IGNORED_FIELDS)
COMPLETION_BODY_KEYS = ("model", "prompt", "n", *F.IGNORED_FIELDS)
DETECT_LINES = 1000  # lines read to find a file's first JSON object (its format)

# The longest line read: 4 MiB is about 8x the text of a 128k-token context (the largest any
# supported model has) with room for JSON escapes; a longer line cannot fit any model, and
# reading it whole could exhaust memory.
MAX_LINE_BYTES = 4 * 2**20
_SKIP_CHUNK = 2**20


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One usable input line: what to prompt with and how to sample."""

    line: int  # 1-based line number in the input file
    id: RecordId  # the user's id (custom_id for OpenAI lines), else the 0-based line number (text)
    kind: Kind
    prompt: str | None  # plain and openai_completion
    messages: tuple[dict[str, str], ...] | None  # chat and openai_chat
    sampling: SamplingOverrides
    n: int | None = None  # samples of the prompt to answer with; None = the job default
    model: str | None = None  # the model an OpenAI body names


@dataclass(frozen=True, slots=True)
class BadLine:
    """One unusable input line: where, why, and how its error record is shaped."""

    line: int
    id: RecordId | None  # None when the line's id could not be read
    code: str  # invalid_json, invalid_field, empty_prompt, unknown_field, unsupported_field, ...
    message: str
    param: str | None = None  # the field at fault, when there is one
    openai: bool = False  # a line of an OpenAI batch file: answered with a batch envelope
    status: int = 400  # the HTTP status an OpenAI endpoint would answer with (404: model_not_found)

    def describe(self) -> str:
        """One line for a terminal: `line 7 (id 'q7'): message`."""
        who = f" (id {self.id!r})" if self.id is not None else ""
        return f"line {self.line}{who}: {self.message}"


@dataclass(frozen=True, slots=True)
class LineRules:
    """What a job's lines are read against: the file's format, and the model names it serves."""

    openai_file: bool = False  # every line is read as an OpenAI batch line
    served_models: frozenset[str] | None = None  # None: a body's model may name any model


PLAIN_RULES = LineRules()


def _json_error(raw: bytes, pos: int) -> str:
    """`not valid JSON at character 2, near 'not json'`: where the parser stopped, in the line's
    own text (the parser's words, "expected 'null'", mean little to whoever wrote the line)."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    char = len(raw[:pos].decode("utf-8", "replace"))  # pos counts bytes
    if char >= len(text):
        return "not valid JSON: the line ends before its JSON does"
    near = text[char : char + 20]
    return f"not valid JSON at character {char + 1}, near {near!r}"


def parse_line(raw: bytes, line: int, rules: LineRules = PLAIN_RULES) -> InputRecord | BadLine | None:
    """The record of one input line (its newline may be on it); None for a blank line."""
    if not raw or raw.isspace():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BadLine(line, None, "invalid_json", _json_error(raw, exc.pos), openai=rules.openai_file)
    if not isinstance(obj, dict):
        message = f"a line must be a JSON object, got a {type(obj).__name__}"
        return BadLine(line, None, "invalid_json", message, openai=rules.openai_file)
    openai = rules.openai_file or not _OPENAI_NAMES.isdisjoint(obj)
    rid = line_id(obj, line, openai)
    if openai:
        return _openai(obj, line, rid, rules.served_models)
    try:
        if rid is None:
            F.record_id(obj["id"], "id")  # raises the reason
        return _plain(obj, line, rid)  # type: ignore[arg-type]
    except FieldError as exc:
        return BadLine(line, rid, exc.code, str(exc), exc.param)


def line_id(obj: Any, line: int, openai: bool | None = None) -> RecordId | None:
    """The id a parsed line answers to: its custom_id (OpenAI lines; `openai` None: judged by
    its keys) or id, else its 0-based line number; None when that field is missing from an
    OpenAI line or unusable (or the line is not an object)."""
    if not isinstance(obj, dict):
        return None
    if openai is None:
        openai = not _OPENAI_NAMES.isdisjoint(obj)
    if not openai:
        value = obj.get("id")
        if value is None:
            return str(line - 1)
    else:
        value = obj.get("custom_id")
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def detect_rules(path: str | Path, served_models: frozenset[str] | None = None) -> LineRules:
    """The LineRules of the file at `path`: an OpenAI batch file when its first JSON object
    (within DETECT_LINES lines) has an OpenAI batch key."""
    with open_input(path) as f:
        for number, raw in read_lines(f):
            if number > DETECT_LINES:
                break
            if raw is None or raw.isspace():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return LineRules(not _OPENAI_NAMES.isdisjoint(obj), served_models)
    return LineRules(False, served_models)


def _plain(obj: dict[str, Any], line: int, rid: RecordId) -> InputRecord:
    if not _PLAIN_NAMES.issuperset(obj):
        F.check_typos(obj, PLAIN_KEYS)
    F.check_unsupported(obj)
    obj = F.resolve_aliases(obj)
    has_prompt, has_messages = obj.get("prompt") is not None, obj.get("messages") is not None
    if has_prompt == has_messages:
        why = "both" if has_prompt else "neither"
        raise FieldError(None, f"a line needs exactly one of prompt or messages, it has {why}", "missing_prompt")
    sampling, n = F.sampling_overrides(obj), F.sample_count(obj)
    system = obj.get("system")
    if has_prompt:
        if system is not None:
            raise FieldError("system", "system goes with messages (a system message first); put it in the prompt of a plain line")
        return InputRecord(line, rid, "plain", F.prompt_text(obj["prompt"]), None, sampling, n)
    messages = F.messages(obj["messages"])
    if system is not None:  # Anthropic's spelling of a first system message
        messages = ({"role": "system", "content": F.prompt_text(system, "system")}, *messages)
    return InputRecord(line, rid, "chat", None, messages, sampling, n)


def _openai(obj: dict[str, Any], line: int, rid: RecordId | None, served: frozenset[str] | None) -> InputRecord | BadLine:
    """An OpenAI batch line; what the endpoint would refuse becomes a 400 BadLine (404 for a
    model that is not served)."""
    if rid is None:
        try:
            F.record_id(obj.get("custom_id"), "custom_id")
        except FieldError as exc:
            return BadLine(line, None, "invalid_field", str(exc), "custom_id", openai=True)
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
        model = _model(body.get("model"), served)
        F.check_unsupported(body)
        F.check_openai_tools(body)
        if kind == "openai_chat":
            _no_unknown(body, CHAT_BODY_KEYS)
            key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            sampling = F.sampling_overrides(body, key, "chat", openai=True)
            messages = F.messages(body.get("messages"))
            return InputRecord(line, rid, kind, None, messages, sampling, F.sample_count(body), model)
        _no_unknown(body, COMPLETION_BODY_KEYS)
        sampling = F.sampling_overrides(body, logprobs_style="completion", openai=True)
        prompt = _completion_prompt(body.get("prompt"))
        return InputRecord(line, rid, kind, prompt, None, sampling, F.sample_count(body), model)
    except FieldError as exc:
        status = 404 if exc.code == "model_not_found" else 400
        return BadLine(line, rid, exc.code, str(exc), exc.param, openai=True, status=status)


def _model(value: Any, served: frozenset[str] | None) -> str:
    """The body's model: a string, as OpenAI requires; one of `served` when that is given."""
    if value is None:
        raise FieldError("model", "the body needs a model (a string naming the model)", "missing_model")
    if not isinstance(value, str) or not value:
        raise FieldError("model", f"model must be a non-empty string, got {value!r:.40}", "invalid_field")
    if served is not None and value not in served:
        names = ", ".join(sorted(served))
        raise FieldError("model", f"the model {value!r:.80} does not exist here (served: {names})", "model_not_found")
    return value


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


def read_input(path: str | Path, rules: LineRules | None = None) -> Iterator[InputRecord | BadLine]:
    """Every non-blank line of the JSONL file `path`, parsed, in file order (`rules`: those of
    detect_rules when not given)."""
    rules = rules or detect_rules(path)
    with open_input(path) as f:
        for number, raw in read_lines(f):
            if raw is None:
                message = f"the line is longer than {MAX_LINE_BYTES >> 20} MiB"
                yield BadLine(number, None, "line_too_long", message, openai=rules.openai_file)
                continue
            record = parse_line(raw, number, rules)
            if record is not None:
                yield record


def read_ids(path: str | Path, rules: LineRules | None = None) -> Iterator[tuple[int, RecordId | None]]:
    """(line number, line_id) of every non-blank line: the keys of a job without checking the
    rest of each line (the first, cheap pass over a large input)."""
    rules = rules or detect_rules(path)
    openai = True if rules.openai_file else None
    with open_input(path) as f:
        for number, raw in read_lines(f):
            if raw is None:
                yield number, None
            elif raw and not raw.isspace():
                try:
                    yield number, line_id(orjson.loads(raw), number, openai)
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
