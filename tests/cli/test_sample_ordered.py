"""The sample job as the README's first command runs it, on the embedded model: every line gets a
real answer; with --ordered the records come in input order, through a kill -9 and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "prompts.jsonl"
# 16 greedy tokens: the start of the README command's 256-token answers (greedy decoding gives
# the same first tokens), so an answer that is empty here is empty there
ARGS = ["--max-tokens", "16", "--quiet", "--device", "cpu", "--ordered"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines(keepends=True) if x.endswith("\n")]


@pytest.fixture(scope="module")
def ordered_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], int]:
    """The sample job with --ordered, killed (SIGKILL) once some records are out, then resumed:
    (the final records, how many the killed run had written)."""
    out = tmp_path_factory.mktemp("ordered") / "out.jsonl"
    cmd = [sys.executable, "-m", "batchllm_cli", "run", str(SAMPLE), "-o", str(out), *ARGS]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    written = 0
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        written = len(_lines(out))
        if written:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    written = len(_lines(out))
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    return _lines(out), written


def test_ordered_output_keeps_input_order_through_a_kill_and_resume(ordered_run) -> None:
    records, written = ordered_run
    want = [json.loads(x)["id"] for x in SAMPLE.read_text().splitlines() if x.strip()]
    assert 0 < written < len(want)  # the kill came mid-job
    assert [r["id"] for r in records] == want  # every id once, in input order


def test_every_sample_line_gets_a_real_answer(ordered_run) -> None:
    """The sample prompts are chat messages the embedded instruct model answers (prompts ending
    in "Answer:" made it stop at once on 11 of 50)."""
    records, _ = ordered_run
    empty = [r["id"] for r in records if not r["text"].strip()]
    assert empty == [] and len(records) == 50


def test_bad_lines_exit_8_unless_allowed_and_go_to_the_errors_file(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"custom_id": "ok", "method": "POST", "url": "/v1/completions",
                               "body": {"model": "tiny", "prompt": "Once upon"}}) + "\n{not json\n")
    base = [sys.executable, "-m", "batchllm_cli", "run", str(inp), "--model", "tiny-llama", "--max-tokens", "2",
            "-q", "--device", "cpu"]
    plain = subprocess.run([*base, "-o", str(tmp_path / "a.jsonl")], env=ENV, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 8, plain.stderr
    err = tmp_path / "err.jsonl"
    allowed = subprocess.run([*base, "-o", str(tmp_path / "b.jsonl"), "--errors", str(err), "--allow-bad-lines"],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr
    assert [r["custom_id"] for r in _lines(tmp_path / "b.jsonl")] == ["ok"]
    assert [(r["custom_id"], r["response"], r["error"]["line"]) for r in _lines(err)] == [(None, None, 2)]
    empty_stop = subprocess.run([*base, "-o", str(tmp_path / "c.jsonl"), "--stop", ""], env=ENV, capture_output=True,
                                text=True, timeout=300)
    assert empty_stop.returncode == 2 and "stop string cannot be empty" in empty_stop.stderr
