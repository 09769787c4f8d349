"""The output side of `batchllm run`: the writer and its sidecar, resume and torn-line repair,
the key index, and run_job end to end with the echoing backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from batchllm_cli.errors import InputError, OutputError
from batchllm_cli.io.echo import EchoBackend
from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.formats import completion_record, dumps_line, error_record
from batchllm_cli.io.index import KeyIndex, key_of
from batchllm_cli.io.job import JobInterrupted, JobOptions, JobSummary, run_job
from batchllm_cli.io.reader import BadLine, InputRecord
from batchllm_cli.io.writer import OutputWriter, inspect_output, scan_output, sidecar_path
from batchllm_cli.types import Completion, SamplingParams

CHAT = [{"role": "user", "content": "hello chat"}]


# --- helpers -----------------------------------------------------------------------------------


def _jsonl(path: Path, objs: list[Any]) -> Path:
    """Writes `objs` as JSONL (a bytes item is written as that raw line)."""
    path.write_bytes(b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs))
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _sidecar(out: Path) -> dict[str, Any]:
    return orjson.loads(sidecar_path(out).read_bytes())


def _opts(inp: Path, out: Path, settings: dict[str, Any] | None = None, **kw: Any) -> JobOptions:
    fp = JobFingerprint.make(inp, "echo", settings if settings is not None else {"temperature": 0.0})
    return JobOptions(inp, out, fp, **kw)


class _Seen:
    """Records the id of every request the echo backend runs."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, rec: InputRecord) -> None:
        self.ids.append(rec.id)


class _Factory:
    """A backend factory that counts how often it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> EchoBackend:
        self.calls += 1
        return EchoBackend()


def _run(opts: JobOptions, seen: _Seen | None = None, should_stop: Callable[[], str | None] = lambda: None,
         **backend: Any) -> JobSummary:
    return run_job(opts, lambda: EchoBackend(on_item=seen, **backend), should_stop=should_stop)


def _key(rec: dict[str, Any]) -> str:
    """What an output record answers: its (custom) id, or `line N` for an id-less error record."""
    rid = rec.get("custom_id", rec.get("id"))
    return rid if rid is not None else f"line {rec['line']}"


def _fingerprint(tag: str = "a") -> JobFingerprint:
    return JobFingerprint(tag * 64, 10, "echo", (("temperature", 0.0),))


def _plain(rid: str, text: str = "t") -> dict[str, Any]:
    return {"id": rid, "text": text, "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "shared_prefix_tokens": 0}}


# --- OutputWriter and the sidecar --------------------------------------------------------------


def test_fresh_write_and_sidecar(tmp_path: Path) -> None:
    """A fresh output gets its sidecar (incomplete) before any line, then one line per record;
    closing complete marks the sidecar complete with the record count and the fingerprint."""
    out = tmp_path / "sub" / "out.jsonl"
    fp = _fingerprint()
    state = inspect_output(out, fp, overwrite=False)
    assert state.mode == "fresh" and state.records == 0
    with OutputWriter(out, state, fp) as w:
        side = _sidecar(out)
        assert (side["complete"], side["records"]) == (False, 0)
        assert out.read_bytes() == b""
        w.write(_plain("a", "first"))
        w.write(_plain("b", "second"))
        assert out.read_bytes() == dumps_line(_plain("a", "first")) + dumps_line(_plain("b", "second"))
        w.close(complete=True)
    side = _sidecar(out)
    assert (side["complete"], side["records"]) == (True, 2)
    assert JobFingerprint.from_dict(side) == fp
    assert not sidecar_path(out).with_name(sidecar_path(out).name + ".tmp").exists()


def test_writer_left_without_close_keeps_sidecar_incomplete(tmp_path: Path) -> None:
    """Leaving the writer's context without close(complete=True) leaves the sidecar incomplete."""
    out = tmp_path / "out.jsonl"
    fp = _fingerprint()
    with OutputWriter(out, inspect_output(out, fp, False), fp) as w:
        w.write(_plain("a"))
    assert _sidecar(out)["complete"] is False
    assert len(_read(out)) == 1


def test_resume_state_holds_finished_keys(tmp_path: Path) -> None:
    """An existing output of the same job resumes; its plain, error and OpenAI records are done."""
    out = tmp_path / "out.jsonl"
    fp = _fingerprint()
    bad = BadLine(3, None, "invalid_json", "not valid JSON")
    openai_bad = BadLine(4, "c1", "unsupported_field", "n=2", "n", openai=True)
    with OutputWriter(out, inspect_output(out, fp, False), fp) as w:
        for rec in (_plain("a"), _plain("b"), error_record(bad, fp.tag), error_record(openai_bad, fp.tag)):
            w.write(rec)
    state = inspect_output(out, fp, overwrite=False)
    assert (state.mode, state.records, state.torn_bytes) == ("resume", 4, 0)
    assert state.keep_bytes == out.stat().st_size
    for key in (key_of("a", 1), key_of("b", 2), key_of(None, 3), key_of("c1", 4)):
        assert key in state.done
    for key in (key_of("c", 5), key_of(None, 4), key_of("3", 3)):
        assert key not in state.done


@pytest.mark.parametrize(
    "tail",
    [b'{"id": "c", "te', b'{"id": "c", "text": "x"}', b"garbage\n", b"[1, 2]\n", b'{"not": "ours"}\n', b"\xff\xfe\x00"],
    ids=["partial", "whole-but-no-newline", "garbage", "not-an-object", "not-a-record", "binary"],
)
def test_torn_last_line_is_cut(tmp_path: Path, tail: bytes) -> None:
    """Whatever follows the last whole record (partial bytes, a line that is not a record) is
    reported as torn_bytes and cut before the next append."""
    out = tmp_path / "out.jsonl"
    fp = _fingerprint()
    good = dumps_line(_plain("a")) + dumps_line(_plain("b"))
    out.write_bytes(good + tail)
    sidecar_path(out).write_bytes(orjson.dumps({**fp.to_dict(), "complete": False, "records": 2}))
    state = inspect_output(out, fp, overwrite=False)
    assert (state.mode, state.records, state.keep_bytes, state.torn_bytes) == ("resume", 2, len(good), len(tail))
    with OutputWriter(out, state, fp) as w:
        w.write(_plain("c"))
    assert out.read_bytes() == good + dumps_line(_plain("c"))


def test_everything_after_a_bad_middle_line_is_run_again(tmp_path: Path) -> None:
    """A line that is not a record stops the scan: it and all after it count as torn."""
    out = tmp_path / "out.jsonl"
    head = dumps_line(_plain("a"))
    rest = b"junk\n" + dumps_line(_plain("b"))
    out.write_bytes(head + rest)
    state = scan_output(out)
    assert (state.records, state.keep_bytes, state.torn_bytes) == (1, len(head), len(rest))
    assert key_of("b", 0) not in state.done


def test_fingerprint_mismatch_with_finished_records_is_refused(tmp_path: Path) -> None:
    """Other settings or other input against an output with finished records: OutputError that
    says what changed and mentions --overwrite, and the output is left alone."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    out = tmp_path / "out.jsonl"
    _run(_opts(inp, out, {"temperature": 0.0}))
    before = out.read_bytes()
    with pytest.raises(OutputError, match="--overwrite") as exc:
        _run(_opts(inp, out, {"temperature": 0.5}))
    assert "temperature 0.0 -> 0.5" in str(exc.value)
    _jsonl(inp, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "changed"}])
    with pytest.raises(OutputError, match="--overwrite") as exc:
        _run(_opts(inp, out, {"temperature": 0.0}))
    assert "input file's content" in str(exc.value)
    assert out.read_bytes() == before


def test_fingerprint_mismatch_without_finished_records_starts_fresh(tmp_path: Path) -> None:
    """An output of another job that holds no whole record (only a torn line) is simply restarted."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "a", "te')
    sidecar_path(out).write_bytes(orjson.dumps(_fingerprint("b").to_dict()))
    assert inspect_output(out, _fingerprint("a"), overwrite=False).mode == "fresh"


def test_overwrite_starts_over(tmp_path: Path) -> None:
    """--overwrite replaces an output of another job: only the new job's records remain, and the
    sidecar is the new job's."""
    out = tmp_path / "out.jsonl"
    first = _jsonl(tmp_path / "a.jsonl", [{"id": f"old{i}", "prompt": "old"} for i in range(5)])
    _run(_opts(first, out))
    second = _jsonl(tmp_path / "b.jsonl", [{"id": "new1", "prompt": "p one"}, {"id": "new2", "prompt": "p two"}])
    opts = _opts(second, out, {"temperature": 1.0}, overwrite=True)
    summary = _run(opts)
    assert (summary.resumed, summary.completed) == (0, 2)
    assert [(r["id"], r["text"]) for r in _read(out)] == [("new1", "p one"), ("new2", "p two")]
    assert JobFingerprint.from_dict(_sidecar(out)) == opts.fingerprint


def test_overwrite_of_the_same_job_reruns_everything(tmp_path: Path) -> None:
    """--overwrite on a finished output of the same job runs every line again (nothing resumed)."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    out = tmp_path / "out.jsonl"
    _run(_opts(inp, out))
    seen = _Seen()
    summary = _run(_opts(inp, out, overwrite=True), seen)
    assert seen.ids == ["a", "b"] and summary.resumed == 0
    assert [r["id"] for r in _read(out)] == ["a", "b"]


def test_output_without_sidecar_is_refused(tmp_path: Path) -> None:
    """A non-empty output that batchllm did not write (no sidecar) is not touched."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"precious user data\n")
    with pytest.raises(OutputError, match="--overwrite") as exc:
        _run(_opts(inp, out))
    assert sidecar_path(out).name in str(exc.value)
    assert out.read_bytes() == b"precious user data\n"
    _run(_opts(inp, out, overwrite=True))
    assert [r["id"] for r in _read(out)] == ["a"]


def test_empty_output_without_sidecar_starts_fresh(tmp_path: Path) -> None:
    """An empty file at the output path (e.g. from touch) is used as a fresh output."""
    out = tmp_path / "out.jsonl"
    out.touch()
    assert inspect_output(out, _fingerprint(), overwrite=False).mode == "fresh"


def test_damaged_sidecar_is_refused(tmp_path: Path) -> None:
    """A sidecar that is not a readable fingerprint is an OutputError, not a crash."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(dumps_line(_plain("a")))
    for doc in (b"{not json", b'{"version": 1}', b"[]", b'{"version": 99, "input": {}}'):
        sidecar_path(out).write_bytes(doc)
        with pytest.raises(OutputError, match="--overwrite"):
            inspect_output(out, _fingerprint(), overwrite=False)


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_is_a_directory(tmp_path: Path, overwrite: bool) -> None:
    """An output path that is a directory is an OutputError, with or without --overwrite."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    (tmp_path / "outdir").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        _run(_opts(inp, tmp_path / "outdir", overwrite=overwrite))


def test_output_is_the_input(tmp_path: Path) -> None:
    """Writing the output over the input file is refused before anything is written."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    before = inp.read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        _run(_opts(inp, inp, overwrite=True))
    assert inp.read_bytes() == before


# --- KeyIndex ----------------------------------------------------------------------------------


def test_key_index_duplicates_name_both_lines() -> None:
    """Each repeated key is reported as (line of its first use, repeating line), by repeating line."""
    idx = KeyIndex()
    for line, rid in enumerate(["a", "b", "c", "a", None, "b", "a", None], start=1):
        idx.add(key_of(rid, line), line)
    assert idx.duplicates() == [(1, 4), (2, 6), (1, 7)]
    assert idx.count_duplicates() == 3
    assert idx.duplicates(limit=2) == [(1, 4), (2, 6)]


def test_key_index_membership_and_kinds_of_keys() -> None:
    """Membership is exact; an id key never equals a line-number key, even for id "5" vs line 5."""
    idx = KeyIndex()
    idx.add(key_of("x", 1), 1)
    idx.add(key_of(None, 5), 5)
    assert key_of("x", 99) in idx and key_of(None, 5) in idx
    assert key_of("5", 5) not in idx and key_of(None, 1) not in idx and key_of("y", 1) not in idx
    assert key_of("5", 1) != key_of(None, 5) and key_of("l5", 1) != key_of(None, 5)


def test_key_index_large_with_few_duplicates() -> None:
    """In 50,000 keys, exactly the planted duplicates are found, with their lines."""
    idx = KeyIndex()
    planted = {10_000: 17, 30_000: 25_000, 49_999: 0}  # repeating line -> line it repeats (0-based)
    for i in range(50_000):
        idx.add(key_of(f"id-{planted.get(i, i)}", i + 1), i + 1)
    assert idx.duplicates() == [(18, 10_001), (25_001, 30_001), (1, 50_000)]
    assert key_of("id-49998", 0) in idx and key_of("id-50000", 0) not in idx


def test_key_index_empty_and_frozen() -> None:
    """An empty index has no duplicates and no members; adding after a lookup is refused."""
    idx = KeyIndex()
    assert idx.duplicates() == [] and key_of("a", 1) not in idx and len(idx) == 0
    with pytest.raises(RuntimeError):
        idx.add(key_of("a", 1), 1)


# --- run_job end to end ------------------------------------------------------------------------


def test_clean_job_answers_every_line_once(tmp_path: Path) -> None:
    """A good input gives one record per line in input order, each echoing its prompt, and a
    complete sidecar."""
    lines = [{"id": "a", "prompt": "one two"}, {"messages": CHAT}, {"id": 7, "prompt": "z"}]
    inp = _jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    seen = _Seen()
    summary = _run(_opts(inp, out), seen)
    recs = _read(out)
    assert [(r["id"], r["text"], r["finish_reason"]) for r in recs] == [
        ("a", "one two", "stop"), ("1", "hello chat", "stop"), ("7", "z", "stop")]
    assert recs[0]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "shared_prefix_tokens": 0}
    assert seen.ids == ["a", "1", "7"]
    assert (summary.lines, summary.completed, summary.errors, summary.bad_lines) == (3, 3, 0, 0)
    assert _sidecar(out)["complete"] is True and _sidecar(out)["records"] == 3


@pytest.mark.parametrize(
    "lines, first, repeat",
    [
        ([{"id": "a", "prompt": "x"}, {"id": "q1", "prompt": "x"}, {"id": "b", "prompt": "x"},
          {"id": "q1", "prompt": "y"}], 2, 4),
        ([{"prompt": "x"}, {"id": "b", "prompt": "x"}, {"id": "0", "prompt": "y"}], 1, 3),
        ([{"id": 7, "prompt": "x"}, {"id": "7", "prompt": "y"}], 1, 2),
        ([{"id": "q", "prompt": "x", "max_tokens": "ten"}, {"id": "q", "prompt": "y"}], 1, 2),
        ([{"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x"}},
          {"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "y"}}], 1, 2),
    ],
    ids=["explicit", "implicit-line-id", "int-vs-str", "bad-line-with-id", "custom_id"],
)
@pytest.mark.parametrize("strict", [False, True])
def test_duplicate_ids_refused_up_front(tmp_path: Path, lines: list[Any], first: int, repeat: int,
                                        strict: bool) -> None:
    """Repeated ids are an InputError naming both lines, before the output or the backend exists."""
    inp = _jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    factory = _Factory()
    with pytest.raises(InputError, match=f"line {repeat} repeats the id of line {first}"):
        run_job(_opts(inp, out, strict=strict), factory)
    assert factory.calls == 0
    assert not out.exists() and not sidecar_path(out).exists()


def test_many_duplicates_are_summarised(tmp_path: Path) -> None:
    """Past the first 50 duplicate pairs, the message says how many more there are."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "same", "prompt": "x"}] * 60)
    with pytest.raises(InputError, match=r"and 9 more") as exc:
        _run(_opts(inp, tmp_path / "out.jsonl"))
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
    {"id": "n", "prompt": "a", "n": 2},
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
    inp = _jsonl(tmp_path / "in.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    seen = _Seen()
    summary = _run(_opts(inp, out), seen)
    assert sorted(seen.ids) == sorted(MIXED_GOOD)
    recs = _read(out)
    keys = [_key(r) for r in recs]
    assert sorted(keys) == sorted([*MIXED_GOOD, *MIXED_BAD])
    for r in recs:
        key = _key(r)
        if key in MIXED_GOOD:
            assert r["text"] == MIXED_GOOD[key]
        elif key == "oa-bad":
            assert r["response"]["status_code"] == 400
            assert r["response"]["body"]["error"]["code"] == "invalid_url"
            assert r["response"]["body"]["error"]["message"].startswith("line 11: ")
        else:
            assert (r["line"], r["error"]["code"]) == MIXED_BAD[key]
            assert r["error"]["message"]
    assert (summary.lines, summary.bad_lines, summary.errors, summary.completed) == (12, 8, 8, 4)
    assert _sidecar(out)["complete"] is True


def test_strict_lists_every_bad_line_and_writes_nothing(tmp_path: Path) -> None:
    """--strict: any bad line is an InputError naming each bad line; no output, no backend."""
    inp = _jsonl(tmp_path / "in.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    factory = _Factory()
    with pytest.raises(InputError) as exc:
        run_job(_opts(inp, out, strict=True), factory)
    msg = str(exc.value)
    assert msg.startswith(f"{len(MIXED_BAD)} bad input line(s)")
    listed = {int(item.split()[1].rstrip(":")) for item in msg.split("\n  ")[1:]}
    assert listed == {line for line, _ in MIXED_BAD.values()}
    assert factory.calls == 0
    assert not out.exists() and not sidecar_path(out).exists()


def test_strict_on_a_clean_input_runs(tmp_path: Path) -> None:
    """--strict with no bad line runs the job as usual."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    summary = _run(_opts(inp, tmp_path / "out.jsonl", strict=True))
    assert summary.completed == 2


def test_too_long_for_the_model_becomes_an_error_record(tmp_path: Path) -> None:
    """A request the backend rejects (over its context) gets a context_length_exceeded record
    (a 400 for an OpenAI line); with --strict it is an InputError instead."""
    inp = _jsonl(tmp_path / "in.jsonl", [
        {"id": "short", "prompt": "a b"},
        {"id": "long", "prompt": " ".join(["w"] * 20)},
        {"custom_id": "oa-long", "url": "/v1/completions", "body": {"prompt": " ".join(["w"] * 20)}},
    ])
    out = tmp_path / "out.jsonl"
    seen = _Seen()
    tiny = SamplingParams(max_tokens=2)
    summary = _run(_opts(inp, out), seen, max_model_len=10, defaults=tiny)
    assert seen.ids == ["short"]
    by_key = {_key(r): r for r in _read(out)}
    assert by_key["short"]["text"] == "a b"
    assert by_key["long"]["error"]["code"] == "context_length_exceeded"
    assert by_key["oa-long"]["response"]["status_code"] == 400
    assert (summary.errors, summary.completed) == (2, 1)
    with pytest.raises(InputError, match="context"):
        _run(_opts(inp, tmp_path / "strict.jsonl", strict=True), max_model_len=10, defaults=tiny)


def _stop_after(seen: _Seen, n: int, signal: str) -> Callable[[], str | None]:
    return lambda: signal if len(seen.ids) >= n else None


@pytest.mark.parametrize("signal, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupted_job_resumes_to_one_record_per_id(tmp_path: Path, signal: str, code: int) -> None:
    """A job stopped by a signal leaves whole records and an incomplete sidecar; a torn line
    left by the kill is cut; the next run runs only what is missing, ending with exactly one
    record per input line."""
    bad = {i for i in range(1000) if i % 97 == 50}
    lines = [b"{bad json" if i in bad else {"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(1000)]
    inp = _jsonl(tmp_path / "in.jsonl", lines)
    expected = sorted(f"line {i + 1}" if i in bad else f"r{i}" for i in range(1000))
    out = tmp_path / "out.jsonl"
    opts = _opts(inp, out)

    first = _Seen()
    with pytest.raises(JobInterrupted) as exc:
        _run(opts, first, should_stop=_stop_after(first, 300, signal))
    assert (exc.value.signal_name, exc.value.exit_code, exc.value.summary.interrupted) == (signal, code, signal)
    done = [_key(r) for r in _read(out)]
    assert 0 < len(first.ids) < 1000 - len(bad)
    assert len(done) == len(set(done)) < len(expected)
    assert set(first.ids) <= set(done)
    assert _sidecar(out)["complete"] is False

    torn = b'{"id": "r999", "text": "half a li'
    with open(out, "ab") as f:
        f.write(torn)
    second = _Seen()
    summary = _run(opts, second)
    assert (summary.resumed, summary.torn_bytes) == (len(done), len(torn))
    assert not set(second.ids) & set(first.ids)
    final = [_key(r) for r in _read(out)]
    assert sorted(final) == expected
    assert final[: len(done)] == done
    assert summary.completed == len(second.ids) == 1000 - len(bad) - len(first.ids)
    assert _sidecar(out)["complete"] is True and _sidecar(out)["records"] == 1000

    third = _Seen()
    again = _run(opts, third)
    assert third.ids == [] and again.resumed == 1000 and again.completed == 0
    assert sorted(_key(r) for r in _read(out)) == expected


def test_resume_keeps_finished_records_as_they_are(tmp_path: Path) -> None:
    """Records already in the output (same job) are kept byte for byte and not run again."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"id": k, "prompt": f"p {k}"} for k in "abcd"])
    out = tmp_path / "out.jsonl"
    opts = _opts(inp, out)
    head = dumps_line(_plain("b", "from before")) + dumps_line(_plain("d", "from before"))
    out.write_bytes(head)
    sidecar_path(out).write_bytes(orjson.dumps({**opts.fingerprint.to_dict(), "complete": False, "records": 2}))
    seen = _Seen()
    summary = _run(opts, seen)
    assert seen.ids == ["a", "c"] and summary.resumed == 2
    assert out.read_bytes().startswith(head)
    assert [(r["id"], r["text"]) for r in _read(out)] == [
        ("b", "from before"), ("d", "from before"), ("a", "p a"), ("c", "p c")]


# --- OpenAI output lines -----------------------------------------------------------------------


def test_openai_output_line_shapes(tmp_path: Path) -> None:
    """OpenAI batch lines are answered in the batch output format: custom_id, a status-200
    response whose body is a chat.completion / text_completion, or a 400 with an error body."""
    inp = _jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": CHAT, "max_completion_tokens": 5}},
        {"custom_id": "cmpl-1", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "a b c"}},
        {"custom_id": "bad-1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": CHAT, "n": 2}},
        {"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}},
    ])
    out = tmp_path / "out.jsonl"
    _run(_opts(inp, out))
    recs = {_key(r): r for r in _read(out)}
    assert sorted(recs) == ["bad-1", "chat-1", "cmpl-1", "line 4"]

    chat = recs["chat-1"]
    assert chat["custom_id"] == "chat-1" and chat["error"] is None
    assert chat["id"].startswith("batch_req_") and chat["response"]["request_id"].startswith("req_")
    assert chat["response"]["status_code"] == 200
    body = chat["response"]["body"]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "echo"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hello chat"},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4,
                             "prompt_tokens_details": {"cached_tokens": 0}}

    cmpl = recs["cmpl-1"]["response"]
    assert cmpl["status_code"] == 200
    assert cmpl["body"]["object"] == "text_completion" and cmpl["body"]["id"].startswith("cmpl-")
    assert cmpl["body"]["choices"][0]["text"] == "a b c"
    assert cmpl["body"]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}

    bad = recs["bad-1"]
    assert bad["custom_id"] == "bad-1" and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert (bad["response"]["body"]["error"]["code"], bad["response"]["body"]["error"]["param"]) == (
        "unsupported_field", "n")

    nameless = recs["line 4"]  # no custom_id to answer by: a plain error record
    assert (nameless["id"], nameless["line"], nameless["error"]["code"]) == (None, 4, "invalid_field")


def test_openai_usage_counts_shared_prefix_as_cached_and_ids_are_stable() -> None:
    """cached_tokens is the shared-prefix count; the object ids depend only on the job and the
    custom_id, so a resumed run names a request as the first run did."""
    c = Completion(0, "req-1", "out", (1, 2, 3), "length", 10, 6)
    rec = completion_record("openai_chat", c, "m", "tag1")
    usage = rec["response"]["body"]["usage"]
    assert usage == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                     "prompt_tokens_details": {"cached_tokens": 6}}
    assert rec["response"]["body"]["choices"][0]["finish_reason"] == "length"
    again = completion_record("openai_chat", c, "m", "tag1")
    assert (again["id"], again["response"]["request_id"], again["response"]["body"]["id"]) == (
        rec["id"], rec["response"]["request_id"], rec["response"]["body"]["id"])
    other_job = completion_record("openai_chat", c, "m", "tag2")
    other_req = completion_record("openai_chat", Completion(0, "req-2", "out", (1,), "stop", 1, 0), "m", "tag1")
    assert len({rec["id"], other_job["id"], other_req["id"]}) == 3
    plain = completion_record("plain", c, "m", "tag1")
    assert plain == {"id": "req-1", "text": "out", "finish_reason": "length",
                     "usage": {"prompt_tokens": 10, "completion_tokens": 3, "shared_prefix_tokens": 6}}

