"""The output writer: whole-line appends, the sidecar fingerprint, resume state and torn-line
repair, and the refusals (other job, not ours, damaged sidecar, a directory, the input itself)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchllm_cli.errors import OutputError
from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.formats import dumps_line, error_record
from batchllm_cli.io.index import key_of
from batchllm_cli.io.reader import BadLine
from batchllm_cli.io.writer import OutputWriter, inspect_output, scan_output, sidecar_path
from io_helpers import Seen, fingerprint, job_options, jsonl, plain_record, read_records, run_echo, sidecar

def test_fresh_write_and_sidecar(tmp_path: Path) -> None:
    """A fresh output is made at the first record (nothing exists before), its sidecar
    (incomplete) before the line lands, then one line per record; closing complete marks the
    sidecar complete with the record count and the fingerprint; no temp file is left."""
    out = tmp_path / "sub" / "out.jsonl"
    fp = fingerprint()
    state = inspect_output(out, fp, overwrite=False)
    assert state.mode == "fresh" and state.records == 0
    with OutputWriter(out, state, fp) as w:
        assert not out.exists() and not sidecar_path(out).exists()
        w.write(plain_record("a", "first"))
        side = sidecar(out)
        assert (side["complete"], side["records"]) == (False, 0)
        w.write(plain_record("b", "second"))
        assert out.read_bytes() == dumps_line(plain_record("a", "first")) + dumps_line(plain_record("b", "second"))
        w.close(complete=True)
    side = sidecar(out)
    assert (side["complete"], side["records"]) == (True, 2)
    assert JobFingerprint.from_dict(side) == fp
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl", "out.jsonl.batchllm.json"]
    assert sidecar_path(out).stat().st_mode & 0o777 == 0o644


def test_writer_left_without_close_keeps_sidecar_incomplete(tmp_path: Path) -> None:
    """Leaving the writer's context without close(complete=True) leaves the sidecar incomplete."""
    out = tmp_path / "out.jsonl"
    fp = fingerprint()
    with OutputWriter(out, inspect_output(out, fp, False), fp) as w:
        w.write(plain_record("a"))
    assert sidecar(out)["complete"] is False
    assert len(read_records(out)) == 1


def test_resume_state_holds_finished_keys(tmp_path: Path) -> None:
    """An existing output of the same job resumes; its plain, error and OpenAI records are done."""
    out = tmp_path / "out.jsonl"
    fp = fingerprint()
    bad = BadLine(3, None, "invalid_json", "not valid JSON")
    openai_bad = BadLine(4, "c1", "unsupported_field", "n=2", "n", openai=True)
    with OutputWriter(out, inspect_output(out, fp, False), fp) as w:
        for rec in (plain_record("a"), plain_record("b"), error_record(bad, fp.tag), error_record(openai_bad, fp.tag)):
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
    fp = fingerprint()
    good = dumps_line(plain_record("a")) + dumps_line(plain_record("b"))
    out.write_bytes(good + tail)
    sidecar_path(out).write_bytes(orjson.dumps({**fp.to_dict(), "complete": False, "records": 2}))
    state = inspect_output(out, fp, overwrite=False)
    assert (state.mode, state.records, state.keep_bytes, state.torn_bytes) == ("resume", 2, len(good), len(tail))
    with OutputWriter(out, state, fp) as w:
        w.write(plain_record("c"))
    assert out.read_bytes() == good + dumps_line(plain_record("c"))


def test_everything_after_a_bad_middle_line_is_run_again(tmp_path: Path) -> None:
    """A line that is not a record stops the scan: it and all after it count as torn."""
    out = tmp_path / "out.jsonl"
    head = dumps_line(plain_record("a"))
    rest = b"junk\n" + dumps_line(plain_record("b"))
    out.write_bytes(head + rest)
    state = scan_output(out)
    assert (state.records, state.keep_bytes, state.torn_bytes) == (1, len(head), len(rest))
    assert key_of("b", 0) not in state.done


def test_fingerprint_mismatch_with_finished_records_is_refused(tmp_path: Path) -> None:
    """Other settings or other input against an output with finished records: OutputError that
    says what changed and mentions --overwrite, and the output is left alone."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    out = tmp_path / "out.jsonl"
    run_echo(job_options(inp, out, {"temperature": 0.0}))
    before = out.read_bytes()
    with pytest.raises(OutputError, match="--overwrite") as exc:
        run_echo(job_options(inp, out, {"temperature": 0.5}))
    assert "temperature 0.0 -> 0.5" in str(exc.value)
    jsonl(inp, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "changed"}])
    with pytest.raises(OutputError, match="--overwrite") as exc:
        run_echo(job_options(inp, out, {"temperature": 0.0}))
    assert "input file's content" in str(exc.value)
    assert out.read_bytes() == before


def test_fingerprint_mismatch_without_finished_records_starts_fresh(tmp_path: Path) -> None:
    """An output of another job that holds no whole record (only a torn line) is simply restarted."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "a", "te')
    sidecar_path(out).write_bytes(orjson.dumps(fingerprint("b").to_dict()))
    assert inspect_output(out, fingerprint("a"), overwrite=False).mode == "fresh"


def test_overwrite_starts_over(tmp_path: Path) -> None:
    """--overwrite replaces an output of another job: only the new job's records remain, and the
    sidecar is the new job's."""
    out = tmp_path / "out.jsonl"
    first = jsonl(tmp_path / "a.jsonl", [{"id": f"old{i}", "prompt": "old"} for i in range(5)])
    run_echo(job_options(first, out))
    second = jsonl(tmp_path / "b.jsonl", [{"id": "new1", "prompt": "p one"}, {"id": "new2", "prompt": "p two"}])
    opts = job_options(second, out, {"temperature": 1.0}, overwrite=True)
    summary = run_echo(opts)
    assert (summary.resumed, summary.completed) == (0, 2)
    assert [(r["id"], r["text"]) for r in read_records(out)] == [("new1", "p one"), ("new2", "p two")]
    assert JobFingerprint.from_dict(sidecar(out)) == opts.fingerprint


def test_overwrite_of_the_same_job_reruns_everything(tmp_path: Path) -> None:
    """--overwrite on a finished output of the same job runs every line again (nothing resumed)."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    out = tmp_path / "out.jsonl"
    run_echo(job_options(inp, out))
    seen = Seen()
    summary = run_echo(job_options(inp, out, overwrite=True), seen)
    assert seen.ids == ["a", "b"] and summary.resumed == 0
    assert [r["id"] for r in read_records(out)] == ["a", "b"]


def test_output_without_sidecar_is_refused(tmp_path: Path) -> None:
    """A non-empty output that batchllm did not write (no sidecar) is not touched."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"precious user data\n")
    with pytest.raises(OutputError, match="--overwrite") as exc:
        run_echo(job_options(inp, out))
    assert sidecar_path(out).name in str(exc.value)
    assert out.read_bytes() == b"precious user data\n"
    run_echo(job_options(inp, out, overwrite=True))
    assert [r["id"] for r in read_records(out)] == ["a"]


def test_empty_output_without_sidecar_starts_fresh(tmp_path: Path) -> None:
    """An empty file at the output path (e.g. from touch) is used as a fresh output."""
    out = tmp_path / "out.jsonl"
    out.touch()
    assert inspect_output(out, fingerprint(), overwrite=False).mode == "fresh"


def test_damaged_sidecar_is_refused(tmp_path: Path) -> None:
    """A sidecar that is not a readable fingerprint is an OutputError, not a crash."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(dumps_line(plain_record("a")))
    for doc in (b"{not json", b'{"version": 1}', b"[]", b'{"version": 99, "input": {}}'):
        sidecar_path(out).write_bytes(doc)
        with pytest.raises(OutputError, match="--overwrite"):
            inspect_output(out, fingerprint(), overwrite=False)


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_is_a_directory(tmp_path: Path, overwrite: bool) -> None:
    """An output path that is a directory is an OutputError, with or without --overwrite."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    (tmp_path / "outdir").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        run_echo(job_options(inp, tmp_path / "outdir", overwrite=overwrite))


def test_output_is_the_input(tmp_path: Path) -> None:
    """Writing the output over the input file is refused before anything is written."""
    inp = jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    before = inp.read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        run_echo(job_options(inp, inp, overwrite=True))
    assert inp.read_bytes() == before
