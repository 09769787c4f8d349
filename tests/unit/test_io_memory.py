"""Memory of run_job with the echoing backend, measured by tracemalloc, against the input's size.

run_job makes two passes. Pass 1 collects every line's key (duplicate ids must be refused before
anything is written) in a KeySet that spills to disk past a fixed number of keys (io/index.py);
pass 2 streams lines from the input through the backend to the output. Neither may hold
anything per line in memory: the job's peak at 1,000,000 lines stays below twice its peak at
100,000, and so does each pass's.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from batchllm_cli.io.echo import EchoBackend
from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.job import JobOptions, run_job

SMALL, LARGE = 100_000, 1_000_000


def _input(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(b'{"id":"r%d","prompt":"say %d"}\n' % (i, i) for i in range(n)))
    return path


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            count += chunk.count(b"\n")
    return count


def _measure(tmp_path: Path, n: int) -> tuple[int, int]:
    """(pass-1 peak, pass-2 peak) in bytes of a fresh job of n lines; checks its output."""
    inp = _input(tmp_path / f"in{n}.jsonl", n)
    out = tmp_path / f"out{n}.jsonl"
    opts = JobOptions(inp, out, JobFingerprint.make(inp, "echo", {}))
    pass1: list[int] = []

    def backend() -> EchoBackend:
        # called once pass 1 is over and its index freed: what follows is pass 2
        pass1.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.reset_peak()
        return EchoBackend()

    tracemalloc.start()
    try:
        summary = run_job(opts, backend)
        pass2 = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.completed == n and summary.errors == 0
    assert _count_lines(out) == n
    inp.unlink()
    out.unlink()
    return pass1[0], pass2


@pytest.mark.slow
def test_job_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    """The peak of pass 1 (keys), of pass 2 (read, run, write) and of the job is flat in the lines."""
    small1, small2 = _measure(tmp_path, SMALL)
    large1, large2 = _measure(tmp_path, LARGE)
    mb = 1e6
    print(
        f"\npeak traced memory: {SMALL:,} lines {max(small1, small2) / mb:.2f} MB "
        f"(pass 1 {small1 / mb:.2f}, pass 2 {small2 / mb:.2f}); "
        f"{LARGE:,} lines {max(large1, large2) / mb:.2f} MB (pass 1 {large1 / mb:.2f}, pass 2 {large2 / mb:.2f})"
    )
    assert large1 < 2 * small1, "pass 1 holds something per line"
    assert large2 < 2 * small2, "pass 2 holds something per line"
    assert max(large1, large2) < 2 * max(small1, small2)
