"""`-` for INPUT (standard input) and for `-o` (standard output): pipelines without files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchllm_cli.errors import InputError, OutputError
from batchllm_cli.io.writer import StreamWriter

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "prompts.jsonl"
TINY = ["--model", "tiny-llama", "--max-tokens", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _batchllm(*args: str, stdin: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "batchllm_cli", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=300, cwd=cwd, env=ENV)


def _texts(lines: bytes) -> dict[str, str]:
    records = [json.loads(x) for x in lines.decode().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    return {r["id"]: r.get("text", r.get("error", {}).get("code")) for r in records}


@pytest.fixture(scope="module")
def five() -> bytes:
    return b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[:5])


def test_stdin_to_stdout_answers_every_line_like_a_file_run(tmp_path: Path, five: bytes) -> None:
    piped = _batchllm("run", "-", "-o", "-", *TINY, "-q", stdin=five, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr.decode()
    assert b"Traceback" not in piped.stderr
    (tmp_path / "in.jsonl").write_bytes(five)
    filed = _batchllm("run", "in.jsonl", "-o", "out.jsonl", *TINY, "-q", stdin=b"", cwd=tmp_path)
    assert filed.returncode == 0, filed.stderr.decode()
    assert _texts(piped.stdout) == _texts((tmp_path / "out.jsonl").read_bytes())
    assert len(_texts(piped.stdout)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "out.jsonl.batchllm.json"]


def test_the_same_lines_piped_again_resume_the_output_file(tmp_path: Path, five: bytes) -> None:
    first = _batchllm("run", "-", "-o", "out.jsonl", *TINY, "-q", stdin=five, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    before = (tmp_path / "out.jsonl").read_bytes()
    again = _batchllm("run", "-", "-o", "out.jsonl", *TINY, stdin=five, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert b"resuming out.jsonl: 5 of 5" in again.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == before
    other = _batchllm("run", "-", "-o", "out.jsonl", *TINY, stdin=five[: len(five) // 2], cwd=tmp_path)
    assert other.returncode == 3 and b"other input" in other.stderr  # other lines: refused


def test_bad_lines_get_their_records_on_stdout(tmp_path: Path) -> None:
    lines = b'{"id": "a", "prompt": "hello"}\nnot json\n'
    proc = _batchllm("run", "-", "-o", "-", *TINY, stdin=lines, cwd=tmp_path)
    assert proc.returncode == 8
    records = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert len(records) == 2
    answered = [r for r in records if "text" in r]
    failed = [r for r in records if "error" in r]
    assert [r["id"] for r in answered] == ["a"] and [r["line"] for r in failed] == [2]
    assert b"went to standard output" in proc.stderr
    assert b"{" not in proc.stderr.splitlines()[-1]  # records only on stdout


def test_plan_reads_standard_input(tmp_path: Path, five: bytes) -> None:
    proc = _batchllm("plan", "-", "--format", "json", "--device", "cpu", stdin=five, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["num_requests"] == 5


def test_a_terminal_as_input_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchllm_cli.cli.stdio import input_file

    class Tty(io.BytesIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    with pytest.raises(InputError, match="pipe a JSONL"):
        with input_file(Path("-")) as got:
            raise AssertionError(f"a terminal was read as input: {got}")


def test_a_closed_reader_is_one_output_error() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        with pytest.raises(OutputError, match="standard output was closed"):
            StreamWriter(fd=write_end).write({"id": "a", "text": "x"})
    finally:
        os.close(write_end)
