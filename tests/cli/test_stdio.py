"""`-` for INPUT (standard input) and for `-o` (standard output): pipelines without files."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from batchllm_cli.cli.stdio import SPOOL_PREFIX, input_file
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


def _records_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_inputs_that_cannot_be_read_twice_are_copied_first(tmp_path: Path, five: bytes) -> None:
    """Process substitution and /dev/stdin on a pipe: read once into a private copy, so the job's
    two passes and its fingerprint see every line (not "no input lines: nothing to do")."""
    src = tmp_path / "five.jsonl"
    src.write_bytes(five)
    cmd = f"{sys.executable} -m batchllm_cli run <(cat {src}) -o sub.jsonl {' '.join(TINY)} -q"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=300, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(_records_of(tmp_path / "sub.jsonl")) == 5
    proc = _batchllm("run", "/dev/stdin", "-o", "dev.jsonl", *TINY, stdin=five, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"nothing to do" not in proc.stderr
    assert sorted(r["id"] for r in _records_of(tmp_path / "dev.jsonl")) == sorted(_texts(five))
    assert json.loads((tmp_path / "dev.jsonl.batchllm.json").read_text())["records"] == 5


def test_a_fifo_is_copied_and_its_copy_removed(tmp_path: Path, five: bytes) -> None:
    """input_file() on a FIFO yields a regular file with what the writer sent; the copy lives in
    a private folder that is gone afterwards."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(five,))
    writer.start()
    with input_file(fifo) as (path, name):
        assert path.is_file() and path.read_bytes() == five and name == str(fifo)
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        folder = path.parent
    writer.join()
    assert not folder.exists()


def test_sigterm_while_waiting_for_a_fifo_writer_stops_at_once(tmp_path: Path) -> None:
    """A FIFO nobody writes to: the run waits in open(); one SIGTERM ends it with 143 at once,
    nothing written."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "batchllm_cli", "run", str(fifo), "-o", "out.jsonl", *TINY],
                            stderr=subprocess.PIPE, cwd=tmp_path, env=ENV)
    wchan = Path(f"/proc/{proc.pid}/wchan")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if wchan.exists() and "partner" in wchan.read_text():  # fifo_open -> wait_for_partner
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("could not see the process wait on the FIFO")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert code == 143 and time.monotonic() - sent < 5
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fifo"]


def test_spools_left_by_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    """A kill -9 skips the spool's removal; the next batchllm that reads an input removes the
    copies of processes that no longer run (and leaves those of live ones)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = Path(tempfile.gettempdir())
    stale = root / f"{SPOOL_PREFIX}{dead.pid}-test"
    live = root / f"{SPOOL_PREFIX}{os.getpid()}-test"
    for folder in (stale, live):
        folder.mkdir(exist_ok=True)
        (folder / "input.jsonl").write_bytes(b"{}\n")
    try:
        src = tmp_path / "in.jsonl"
        src.write_bytes(b"{}\n")
        with input_file(src):
            pass
        assert not stale.exists() and live.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


def test_a_spool_of_another_run_is_not_an_input(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))
    try:
        (folder / "input.jsonl").write_bytes(b"{}\n")
        with pytest.raises(InputError, match="temporary copy"):
            with input_file(folder / "input.jsonl"):
                pass
    finally:
        shutil.rmtree(folder)
