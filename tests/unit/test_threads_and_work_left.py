"""The CLI's thread choice (cli/threads.py) and the work-left model behind the ETA (cli/work_left.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from batchllm_cli.cli.threads import Threads, apply_threads, choose_threads
from batchllm_cli.cli.work_left import RunProgress, WorkLeft
from batchllm_cli.types import Completion, Request, SamplingParams


def test_threads_option_then_environment_then_half_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(None, 0.5, cores=2) == Threads(1, "default")
    assert choose_threads(None, 0.5, cores=16) == Threads(8, "default")
    assert choose_threads(None, 0.5, cores=1) == Threads(1, "default")  # never zero
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(None, 0.5, cores=16) == Threads(3, "OMP_NUM_THREADS")
    assert choose_threads(5, 0.5, cores=16) == Threads(5, "--threads")


def test_applying_threads_sets_torch_and_the_environment_for_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test
    monkeypatch.setenv("RAYON_RS_NUM_CPUS", "1")
    before = torch.get_num_threads()
    try:
        apply_threads(Threads(2, "--threads"))
        assert torch.get_num_threads() == 2
        import os

        assert os.environ["OMP_NUM_THREADS"] == os.environ["RAYON_RS_NUM_CPUS"] == "2"
    finally:
        torch.set_num_threads(before)


def _request(i: int, prompt_len: int, max_tokens: int) -> Request:
    return Request(i, f"r{i}", np.arange(prompt_len, dtype=np.int32), SamplingParams(max_tokens=max_tokens))


def _done(i: int, tokens: int) -> Completion:
    return Completion(index=i, id=f"r{i}", text="", token_ids=tuple(range(tokens)), finish_reason="stop",
                      prompt_tokens=0, shared_prefix_tokens=0)


def test_work_left_counts_the_output_budget_of_unfinished_requests_and_the_prompts_to_compute() -> None:
    work = WorkLeft([_request(0, 100, 10), _request(1, 100, 10), _request(2, 100, 10)])
    start = SimpleNamespace(prompt_tokens=0, prefill_tokens=0, output_tokens=0)
    assert work.left(start) == (300, 30)  # nothing known of sharing yet: every prompt token
    # two prompts done, 120 of their 200 tokens computed (a shared prefix), 6 output tokens made
    mid = SimpleNamespace(prompt_tokens=200, prefill_tokens=120, output_tokens=6)
    assert work.left(mid) == (60, 24)  # the last prompt at the same 60% share
    work.finished(_done(0, 2))  # request 0 stopped early: its 8 unused tokens leave the budget
    assert work.left(mid) == (60, 16)
    seen = []
    report = work.reporting(seen.append)
    report(SimpleNamespace(requests_done=1, requests_total=3, elapsed_s=1.0, prefix_tokens_saved=80, **vars(mid)))
    assert seen == [RunProgress(1, 3, 200, 120, 6, 1.0, 80, 60, 16)]
    assert [c.index for c in work.tap([_done(1, 10)])] == [1]  # counted on the way through
    later = SimpleNamespace(prompt_tokens=300, prefill_tokens=180, output_tokens=14)  # request 2 made 2
    assert work.left(later) == (0, 8)
