"""`batchllm run` as a user runs it: a subprocess on the sample file, killed and resumed."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The plain-prompt version of the sample job (base-model style, "...Answer:"): the embedded model
# ends some answers at once and others later, so records are written all through a run and the
# kills below land mid-job (the chat sample's answers all run to max_tokens and finish together).
SAMPLE = ROOT / "tests" / "cli" / "data" / "plain_prompts.jsonl"
ARGS = ["--max-tokens", "8", "--quiet"]
# One torch thread: on a busy shared machine two threads that wait for each other at every small
# decode op make a run up to 10x slower; every run of a test uses the same setting.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batchllm_cli", "run", str(SAMPLE), "-o", str(output), *ARGS, *extra]


def _run(output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(output, *extra), capture_output=True, text=True, timeout=600, env=ENV)


def _records(path: Path) -> dict[str, dict]:
    """The output's records by id; fails on an invalid line or a repeated id."""
    out: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        rec = json.loads(line)  # every line is whole JSON
        assert rec["id"] not in out, f"id {rec['id']} written twice (line {n})"
        out[rec["id"]] = rec
    return out


def _input_ids() -> list[str]:
    return [json.loads(line)["id"] for line in SAMPLE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output of an uninterrupted greedy run of the sample file."""
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def reference(reference_file: Path) -> dict[str, dict]:
    recs = _records(reference_file)
    assert sorted(recs) == sorted(_input_ids())
    return recs


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_for_new_records(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Waits until the running job has written a record of its own (the file grew)."""
    start = _size(path)
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if _size(path) > start:
            return
        time.sleep(0.02)


def _same_texts(got: dict[str, dict], reference: dict[str, dict]) -> None:
    assert sorted(got) == sorted(reference)
    diff = [i for i in reference if got[i]["text"] != reference[i]["text"]]
    assert not diff, f"texts differ from the uninterrupted run for {diff}"


def test_kill_9_at_random_moments_then_resume(tmp_path: Path, reference: dict[str, dict]) -> None:
    out = tmp_path / "out.jsonl"
    rng = random.Random(7)
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        _wait_for_new_records(out, proc)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the middle of writing records
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills == 2, "a job finished before its kill: the moments are too late for this machine"
    whole = out.read_bytes().split(b"\n")[:-1]  # a torn last line (no newline) is resume's to cut
    assert 0 < len(whole) < len(reference)
    assert len({json.loads(line)["id"] for line in whole}) == len(whole)  # valid JSON, no repeats
    final = _run(out)
    assert final.returncode == 0, final.stderr
    _same_texts(_records(out), reference)


def test_sigint_stops_cleanly_then_resumes(tmp_path: Path, reference: dict[str, dict]) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for_new_records(out, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the job finished before SIGINT arrived: nothing was tested")
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    written = _records(out)  # whole lines only, no repeats
    assert 0 < len(written) < len(reference)
    final = _run(out)
    assert final.returncode == 0, final.stderr
    _same_texts(_records(out), reference)


def test_a_finished_output_is_not_run_again_and_other_settings_are_refused(
    tmp_path: Path, reference_file: Path
) -> None:
    out = tmp_path / "out.jsonl"
    shutil.copy(reference_file, out)
    shutil.copy(f"{reference_file}.batchllm.json", f"{out}.batchllm.json")
    before = out.read_bytes()
    again = _run(out)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == before
    other = _run(out, "--temperature", "0.5")
    assert other.returncode == 3, other.stderr
    assert "--overwrite" in other.stderr and "Traceback" not in other.stderr
    assert out.read_bytes() == before
