"""run_job end to end on the echo backend: one record per line, duplicate ids, bad lines and
--strict, requests over the context, interruption by a signal and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from batchllm_cli.errors import InputError
from batchllm_cli.io import index
from batchllm_cli.io.formats import dumps_line
from batchllm_cli.io.job import JobInterrupted, run_job
from batchllm_cli.io.writer import sidecar_path
from batchllm_cli.types import SamplingParams
from io_helpers import (CHAT, Factory, Seen, job_options, jsonl, plain_record, read_records, record_name, run_echo,
                     sidecar)

def test_clean_job_answers_every_line_once(tmp_path: Path) -> None:
    """A good input gives one record per line in input order, each echoing its prompt, and a
    complete sidecar."""
    lines = [{"id": "a", "prompt": "one two"}, {"messages": CHAT}, {"id": 7, "prompt": "z"}]
    inp = jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    seen = Seen()
    summary = run_echo(job_options(inp, out), seen)
    recs = read_records(out)
    assert [(r["id"], r["text"], r["finish_reason"]) for r in recs] == [
        ("a", "one two", "stop"), ("1", "hello chat", "stop"), (7, "z", "stop")]  # an int id stays an int
    assert recs[0]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4, "shared_prefix_tokens": 0}
    assert seen.ids == ["a", "1", 7]
    assert (summary.lines, summary.completed, summary.errors, summary.bad_lines) == (3, 3, 0, 0)
    assert sidecar(out)["complete"] is True and sidecar(out)["records"] == 3


@pytest.mark.parametrize(
    "lines, first, repeat",
    [
        ([{"id": "a", "prompt": "x"}, {"id": "q1", "prompt": "x"}, {"id": "b", "prompt": "x"},
          {"id": "q1", "prompt": "y"}], 2, 4),
        ([{"prompt": "x"}, {"id": "b", "prompt": "x"}, {"id": "0", "prompt": "y"}], 1, 3),
        ([{"id": 7, "prompt": "x"}, {"id": 7, "prompt": "y"}], 1, 2),
        ([{"id": "q", "prompt": "x", "max_tokens": "ten"}, {"id": "q", "prompt": "y"}], 1, 2),
        ([{"custom_id": "c", "url": "/v1/completions", "body": {"model": "m", "prompt": "x"}},
          {"custom_id": "c", "url": "/v1/completions", "body": {"model": "m", "prompt": "y"}}], 1, 2),
    ],
    ids=["explicit", "implicit-line-id", "int", "bad-line-with-id", "custom_id"],
)
@pytest.mark.parametrize("strict", [False, True])
def test_duplicate_ids_refused_up_front(tmp_path: Path, lines: list[Any], first: int, repeat: int,
                                        strict: bool) -> None:
    """Repeated ids are an InputError naming both lines, before the output or the backend exists."""
    inp = jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    factory = Factory()
    with pytest.raises(InputError, match=f"line {repeat} repeats the id of line {first}"):
        run_job(job_options(inp, out, strict=strict), factory)
    assert factory.calls == 0
    assert not out.exists() and not sidecar_path(out).exists()


def test_many_duplicates_are_summarised(tmp_path: Path) -> None:
    """Past the first 50 duplicate pairs, the message says how many more there are."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "same", "prompt": "x"}] * 60)
    with pytest.raises(InputError, match=r"and 9 more") as exc:
        run_echo(job_options(inp, tmp_path / "out.jsonl"))
    assert "line 51 repeats the id of line 1" in str(exc.value)
    assert "line 52 repeats" not in str(exc.value)


MIXED: list[Any] = [
    {"id": "g1", "prompt": "first good"},
    b'{"id": "broken", "prompt": "no closing brace"',
    {"id": "g2", "messages": CHAT},
    {"id": "types", "prompt": "hi", "max_tokens": "ten"},
    b"\x00\xff\xfe garbage \x89PNG\x1a",
    {"id": "empty", "prompt": ""},
    {"id": "g3", "prompt": "third good", "temperature": 0.5, "seed": 3},
    [1, 2, 3],
    {"id": "typo", "prompt": "a", "max_token": 3},
    {"id": "n", "prompt": "a", "best_of": 2},
    {"custom_id": "oa-bad", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
    {"id": "g4", "prompt": "last good"},
]
MIXED_GOOD = {"g1": "first good", "g2": "hello chat", "g3": "third good", "g4": "last good"}
MIXED_BAD = {  # key -> (line, code)
    "line 2": (2, "invalid_json"), "types": (4, "invalid_field"), "line 5": (5, "invalid_json"),
    "empty": (6, "empty_prompt"), "line 8": (8, "invalid_json"), "typo": (9, "unknown_field"),
    "n": (10, "unsupported_field"), "oa-bad": (11, "invalid_url"),
}


def test_bad_lines_become_error_records_and_good_lines_run_once(tmp_path: Path) -> None:
    """Each bad line gets one error record with its line and code; each good line is run and
    answered exactly once."""
    inp = jsonl(tmp_path / "in.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    seen = Seen()
    summary = run_echo(job_options(inp, out), seen)
    assert sorted(seen.ids) == sorted(MIXED_GOOD)
    recs = read_records(out)
    keys = [record_name(r) for r in recs]
    assert sorted(keys) == sorted([*MIXED_GOOD, *MIXED_BAD])
    for r in recs:
        key = record_name(r)
        if key in MIXED_GOOD:
            assert r["text"] == MIXED_GOOD[key]
        elif key == "oa-bad":  # a failure in the one output file: vLLM's shape
            assert r["response"]["status_code"] == 400 and r["response"]["body"] is None
            assert (r["error"]["code"], r["error"]["line"]) == ("invalid_url", 11)
            assert r["error"]["message"].startswith("line 11: ")
        else:
            assert (r["line"], r["error"]["code"]) == MIXED_BAD[key]
            assert r["error"]["message"]
    assert (summary.lines, summary.bad_lines, summary.errors, summary.completed) == (12, 8, 8, 4)
    side = sidecar(out)
    assert side["complete"] is True and side["records"] == 12
    figures = side["last_run"]  # what the finishing run did, for scripts
    assert (figures["lines"], figures["bad_lines"], figures["errors"], figures["completed"]) == (12, 8, 8, 4)
    assert figures["output_tokens"] == summary.output_tokens and figures["wall_s"] >= 0


def test_strict_lists_every_bad_line_and_writes_nothing(tmp_path: Path) -> None:
    """--strict: any bad line is an InputError naming each bad line; no output, no backend."""
    inp = jsonl(tmp_path / "in.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    factory = Factory()
    with pytest.raises(InputError) as exc:
        run_job(job_options(inp, out, strict=True), factory)
    msg = str(exc.value)
    assert msg.startswith(f"{len(MIXED_BAD)} bad input line(s)")
    listed = {int(item.split()[1].rstrip(":")) for item in msg.split("\n  ")[1:]}
    assert listed == {line for line, _ in MIXED_BAD.values()}
    assert factory.calls == 0
    assert not out.exists() and not sidecar_path(out).exists()


def test_strict_on_a_clean_input_runs(tmp_path: Path) -> None:
    """--strict with no bad line runs the job as usual."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    summary = run_echo(job_options(inp, tmp_path / "out.jsonl", strict=True))
    assert summary.completed == 2


def test_too_long_for_the_model_becomes_an_error_record(tmp_path: Path) -> None:
    """A request the backend rejects (over its context) gets a context_length_exceeded record
    (a 400 for an OpenAI line); with --strict it is an InputError instead."""
    inp = jsonl(tmp_path / "in.jsonl", [
        {"id": "short", "prompt": "a b"},
        {"id": "long", "prompt": " ".join(["w"] * 20)},
        {"custom_id": "oa-long", "url": "/v1/completions", "body": {"model": "m", "prompt": " ".join(["w"] * 20)}},
    ])
    out = tmp_path / "out.jsonl"
    seen = Seen()
    tiny = SamplingParams(max_tokens=2)
    summary = run_echo(job_options(inp, out), seen, max_model_len=10, defaults=tiny)
    assert seen.ids == ["short"]
    by_key = {record_name(r): r for r in read_records(out)}
    assert by_key["short"]["text"] == "a b"
    assert by_key["long"]["error"]["code"] == "context_length_exceeded"
    assert by_key["oa-long"]["response"]["status_code"] == 400
    assert (summary.errors, summary.completed) == (2, 1)
    with pytest.raises(InputError, match="context"):
        run_echo(job_options(inp, tmp_path / "strict.jsonl", strict=True), max_model_len=10, defaults=tiny)


def _stop_after(seen: Seen, n: int, signal: str) -> Callable[[], str | None]:
    return lambda: signal if len(seen.ids) >= n else None


@pytest.mark.parametrize("signal, code, spill", [("SIGINT", 130, False), ("SIGTERM", 143, True)],
                         ids=["SIGINT", "SIGTERM-keys-spilled"])
def test_interrupted_job_resumes_to_one_record_per_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      signal: str, code: int, spill: bool) -> None:
    """A job stopped by a signal leaves whole records and an incomplete sidecar; a torn line
    left by the kill is cut; the next run runs only what is missing, ending with exactly one
    record per input line (also with the key sets spilled to disk, as in a large job)."""
    if spill:
        monkeypatch.setattr(index, "MEMORY_ENTRIES", 64)
    bad = {i for i in range(1000) if i % 97 == 50}
    lines = [b"{bad json" if i in bad else {"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(1000)]
    inp = jsonl(tmp_path / "in.jsonl", lines)
    expected = sorted(f"line {i + 1}" if i in bad else f"r{i}" for i in range(1000))
    out = tmp_path / "out.jsonl"
    opts = job_options(inp, out)

    first = Seen()
    with pytest.raises(JobInterrupted) as exc:
        run_echo(opts, first, should_stop=_stop_after(first, 300, signal))
    assert (exc.value.signal_name, exc.value.exit_code, exc.value.summary.interrupted) == (signal, code, signal)
    done = [record_name(r) for r in read_records(out)]
    assert 0 < len(first.ids) < 1000 - len(bad)
    assert len(done) == len(set(done)) < len(expected)
    assert set(first.ids) <= set(done)
    assert sidecar(out)["complete"] is False

    torn = b'{"id": "r999", "text": "half a li'
    with open(out, "ab") as f:
        f.write(torn)
    second = Seen()
    summary = run_echo(opts, second)
    assert (summary.resumed, summary.torn_bytes) == (len(done), len(torn))
    assert not set(second.ids) & set(first.ids)
    final = [record_name(r) for r in read_records(out)]
    assert sorted(final) == expected
    assert final[: len(done)] == done
    assert summary.completed == len(second.ids) == 1000 - len(bad) - len(first.ids)
    assert sidecar(out)["complete"] is True and sidecar(out)["records"] == 1000

    third = Seen()
    again = run_echo(opts, third)
    assert third.ids == [] and again.resumed == 1000 and again.completed == 0
    assert sorted(record_name(r) for r in read_records(out)) == expected


def test_resume_keeps_finished_records_as_they_are(tmp_path: Path) -> None:
    """Records already in the output (same job) are kept byte for byte and not run again."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": k, "prompt": f"p {k}"} for k in "abcd"])
    out = tmp_path / "out.jsonl"
    opts = job_options(inp, out)
    head = dumps_line(plain_record("b", "from before")) + dumps_line(plain_record("d", "from before"))
    out.write_bytes(head)
    sidecar_path(out).write_bytes(orjson.dumps({**opts.fingerprint.to_dict(), "complete": False, "records": 2}))
    seen = Seen()
    summary = run_echo(opts, seen)
    assert seen.ids == ["a", "c"] and summary.resumed == 2
    assert out.read_bytes().startswith(head)
    assert [(r["id"], r["text"]) for r in read_records(out)] == [
        ("b", "from before"), ("d", "from before"), ("a", "p a"), ("c", "p c")]
