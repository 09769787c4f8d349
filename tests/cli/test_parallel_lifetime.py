"""Data-parallel workers (`--device cpu,cpu`) live only as long as their parent: kill -9 of the
parent takes them down, and a SIGTERM to the whole process group stops the job with 143 and a
whole, resumable output."""

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
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TWO = ["--model", "tiny-llama", "--device", "cpu,cpu", "--max-tokens", "64", "-q"]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers(pid: int) -> list[int]:
    out = []
    for kid in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                out.append(kid)
        except OSError:
            pass
    return out


def _start(tmp_path: Path, out: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join((ROOT / "sample_data" / "prompts.jsonl").read_bytes().splitlines(keepends=True)[:12]))
    proc = subprocess.Popen([sys.executable, "-m", "batchllm_cli", "run", str(src), "-o", out, *TWO],
                            cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _workers(proc.pid)
        if len(workers) >= 2:
            return proc, workers
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no two workers appeared (exit {proc.poll()})")


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    proc, workers = _start(tmp_path, "out.jsonl")
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    left = _wait_gone(workers, 30)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "workers outlived their parent"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_process_group_sigterm_exits_143_with_the_output_whole(tmp_path: Path) -> None:
    proc, workers = _start(tmp_path, "out.jsonl")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 143, stderr
    assert "Traceback" not in stderr and "out of memory" not in stderr, stderr
    assert _wait_gone(workers, 30) == []
    out = tmp_path / "out.jsonl"
    done = [json.loads(x)["id"] for x in out.read_text().splitlines()] if out.exists() else []
    assert len(done) == len(set(done)) < 12  # whole lines, each id once
    resumed = subprocess.run([sys.executable, "-m", "batchllm_cli", "run", "in.jsonl", "-o", "out.jsonl",
                              "--model", "tiny-llama", "--max-tokens", "64", "-q"],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 12 and ids[: len(done)] == done
