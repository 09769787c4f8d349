"""Helpers of the io-layer tests: input lines, JSONL files, output records, run_job on the echo backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import orjson

from batchllm_cli.io.echo import EchoBackend
from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.job import JobOptions, JobSummary, run_job
from batchllm_cli.io.reader import BadLine, InputRecord, parse_line
from batchllm_cli.io.writer import sidecar_path

CHAT = [{"role": "user", "content": "hello chat"}]


def jsonl(path: Path, objs: list[Any]) -> Path:
    """Writes `objs` as JSONL (a bytes item is written as that raw line)."""
    path.write_bytes(b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs))
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def sidecar(out: Path) -> dict[str, Any]:
    return orjson.loads(sidecar_path(out).read_bytes())


def job_options(inp: Path, out: Path, settings: dict[str, Any] | None = None, **kw: Any) -> JobOptions:
    fp = JobFingerprint.make(inp, "echo", settings if settings is not None else {"temperature": 0.0})
    return JobOptions(inp, out, fp, **kw)


class Seen:
    """Records the id of every request the echo backend runs."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, rec: InputRecord) -> None:
        self.ids.append(rec.id)


class Factory:
    """A backend factory that counts how often it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> EchoBackend:
        self.calls += 1
        return EchoBackend()


def run_echo(opts: JobOptions, seen: Seen | None = None, should_stop: Callable[[], str | None] = lambda: None,
         **backend: Any) -> JobSummary:
    return run_job(opts, lambda: EchoBackend(on_item=seen, **backend), should_stop=should_stop)


def record_name(rec: dict[str, Any]) -> str:
    """What an output record answers: its (custom) id, or `line N` for an id-less error record."""
    rid = rec.get("custom_id", rec.get("id"))
    if rid is not None:
        return rid
    return f"line {rec['line'] if 'line' in rec else rec['error']['line']}"


def fingerprint(tag: str = "a") -> JobFingerprint:
    return JobFingerprint(tag * 64, 10, "echo", (("temperature", 0.0),))


def plain_record(rid: str, text: str = "t") -> dict[str, Any]:
    return {"id": rid, "text": text, "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "shared_prefix_tokens": 0}}


# --- input lines (the reader's tests) ---------------------------------------------------------

READER_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def json_line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def parse_obj(obj: Any, line: int = 1) -> InputRecord | BadLine | None:
    return parse_line(json_line(obj), line)


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def bad_line(obj: Any, line: int = 1, *, raw: bytes | None = None) -> BadLine:
    rec = parse_line(raw, line) if raw is not None else parse_obj(obj, line)
    assert isinstance(rec, BadLine), rec
    assert rec.line == line
    return rec


def openai_line(url: str, body: dict[str, Any], custom_id: Any = "c1", method: str = "POST") -> dict[str, Any]:
    """An OpenAI batch line; a body without a model gets one (OpenAI requires it)."""
    if isinstance(body, dict) and "model" not in body:
        body = {"model": "m", **body}
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}
