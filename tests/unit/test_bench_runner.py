"""bench/runner.py on the tiny random preset: one shared runner for every engine system, timed
runs interleaved after the warm-ups, the KV cache freed when the workload is done."""

from __future__ import annotations

import gc
import weakref

import pytest

import batchllm_cli.bench.runner as runner_module
from batchllm_cli.bench.model import load_bench_model
from batchllm_cli.bench.runner import BenchOptions, run_workload
from batchllm_cli.bench.workloads import IntRange, WorkloadSpec, generate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("BATCHLLM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield load_bench_model("tiny-llama", "cpu", num_kv_blocks=64)
    mp.undo()


def test_one_runner_warm_then_interleaved_then_freed(tiny, monkeypatch):
    from batchllm_cli.engine import llm as llm_module

    runners = []
    real = llm_module.LLM.from_loaded.__func__

    def spy(cls, *a, **k):
        made = real(cls, *a, **k)
        runners.append(weakref.ref(made.runner))
        return made

    monkeypatch.setattr(llm_module.LLM, "from_loaded", classmethod(spy))
    freed_at_release = []  # release_memory (gc, empty the CUDA cache) must find the runner gone

    def release() -> None:
        gc.collect()
        freed_at_release.append(runners[0]() is None)

    monkeypatch.setattr(runner_module, "release_memory", release)
    spec = WorkloadSpec(name="t", description="", paper="", num_groups=2, degree=IntRange(2, 2),
                        prefix_len=IntRange(20, 20), distinct_len=IntRange(4, 4), output_len=3)  # fmt: skip
    events = []
    res = run_workload(tiny, generate(spec), ["batchllm", "sglang-like"], BenchOptions(repeats=2),
                       lambda s, e, p: events.append((s, e)) if e != "progress" else None)  # fmt: skip
    assert events == [
        ("batchllm", "count"), ("sglang-like", "count"), ("", "counted"),
        ("batchllm", "warmup"), ("sglang-like", "warmup"),
        ("batchllm", "start"), ("batchllm", "done"), ("sglang-like", "start"), ("sglang-like", "done"),
        ("batchllm", "start"), ("batchllm", "done"), ("sglang-like", "start"), ("sglang-like", "done"),
    ]  # fmt: skip
    assert [(r.system, r.repeat, r.order) for r in res.runs] == [
        ("batchllm", 0, 0), ("sglang-like", 0, 1), ("batchllm", 1, 2), ("sglang-like", 1, 3)]  # fmt: skip
    assert all(r.graph_captures is None and r.output_tokens == 12 for r in res.runs)  # no CUDA graphs on a CPU
    assert res.runs[0].roofline_s is None  # no rates given
    assert len(runners) == 1  # every system ran on the one runner
    assert freed_at_release == [True]  # and it was gone (its KV cache with it) when memory was released
