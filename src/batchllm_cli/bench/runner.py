"""Runs a workload through our engine (prefix sharing on, and off) and through the peers.

Every system sees the same token-id prompts in the same shuffled order, with greedy decoding
and EOS ignored, so that each request produces exactly `output_len` tokens. Each engine setting
is warmed up first on a small slice of the workload (Triton compiles, CUDA graphs, allocator),
outside the timing; the timed run includes planning, as a user's run does.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from batchllm_cli.bench.model import BenchModel
from batchllm_cli.bench.report import RunResult
from batchllm_cli.bench.workloads import Workload, generate
from batchllm_cli.types import SamplingParams

SYSTEM_SHARING = "batchllm"
SYSTEM_NO_SHARING = "batchllm-no-sharing"
SYSTEM_HF = "hf-generate-batch"
POLICY_SYSTEMS = ("vllm-like", "sglang-like")  # the peers' scheduling on our engine (engine/caching.py)
WARMUP_GROUPS = 2  # groups of the workload in the warm-up run
WARMUP_OUTPUT = 8  # output tokens per warm-up request: enough decode steps to reach steady state

# (system, event, payload): "start"/"warmup"/"progress"/"done" events for a CLI to draw
EventFn = Callable[[str, str, Any], None]


@dataclass(frozen=True)
class _Tally:
    """The last progress report of a run, and the most KV blocks seen in use."""

    steps: int = 0
    prefill_tokens: int = 0
    peak_kv_blocks: int | None = None


def warmup_workload(workload: Workload) -> Workload:
    """The first groups of `workload` with short outputs: same shapes, a fraction of the cost."""
    spec = workload.spec
    return generate(replace(spec, num_groups=min(WARMUP_GROUPS, spec.num_groups), output_len=min(WARMUP_OUTPUT, spec.output_len)))


def sampling_for(workload: Workload) -> SamplingParams:
    """Greedy, exactly output_len tokens per request."""
    return SamplingParams(max_tokens=workload.spec.output_len, temperature=0.0, ignore_eos=True)


def run_engine(
    bench: BenchModel,
    workload: Workload,
    *,
    prefix_sharing: bool,
    warmup: bool = True,
    on_event: EventFn | None = None,
    policy: str = "batchllm",
    **overrides: Any,
) -> RunResult:
    """One timed run of our engine on `workload` (with BatchLLM's plan, or a peer's `policy`);
    the KV pool is freed before returning."""
    from batchllm_cli.engine.llm import LLM

    if policy != "batchllm":
        system = policy
        overrides["policy"] = policy
    else:
        system = SYSTEM_SHARING if prefix_sharing else SYSTEM_NO_SHARING
    emit = on_event or (lambda *_: None)
    llm = LLM.from_loaded(bench.source, bench.model, config=bench.config, prefix_sharing=prefix_sharing, **overrides)
    try:
        if warmup:
            emit(system, "warmup", None)
            _execute(llm, warmup_workload(workload), None)
        emit(system, "start", workload.num_requests)
        return _execute(llm, workload, lambda p: emit(system, "progress", p), system=system)
    finally:
        del llm
        release_memory()


def _execute(llm: Any, workload: Workload, on_progress: Callable[[Any], None] | None, system: str = "") -> RunResult:
    requests = llm.make_requests(list(workload.prompts), sampling_for(workload))
    tally = _Tally()

    def progress(p: Any) -> None:
        nonlocal tally
        used = getattr(p, "kv_blocks_used", None)
        peak = tally.peak_kv_blocks
        if used is not None:
            peak = used if peak is None else max(peak, used)
        tally = _Tally(p.steps, p.prefill_tokens, peak)
        if on_progress is not None:
            on_progress(p)

    start = time.perf_counter()
    plan = llm.plan(requests)
    plan_s = time.perf_counter() - start
    output_tokens = short = 0
    for c in llm.stream(requests, plan, on_progress=progress):
        output_tokens += c.completion_tokens
        short += c.completion_tokens < workload.spec.output_len
    elapsed = time.perf_counter() - start
    return RunResult(
        system=system,
        num_requests=len(requests),
        output_tokens=output_tokens,
        elapsed_s=elapsed,
        logical_prefill_tokens=workload.logical_prefill_tokens,
        prefill_tokens=tally.prefill_tokens,
        plan_s=plan_s,
        steps=tally.steps,
        kv_pool_blocks=int(llm.num_kv_blocks),
        peak_kv_blocks=tally.peak_kv_blocks,
        est_peak_kv_blocks=plan.stats.est_peak_kv_blocks,
        short_outputs=short,
    )


def release_memory() -> None:
    """Frees what a finished run held (its KV pool) before the next one sizes its own."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run_systems(
    bench: BenchModel,
    workload: Workload,
    systems: Sequence[str],
    *,
    warmup: bool = True,
    on_event: EventFn | None = None,
    hf_options: dict[str, Any] | None = None,
) -> list[RunResult]:
    """Runs each of `systems` in order. The HF peer builds its own model from the same config;
    ours stays loaded beside it but holds no KV pool by then (each engine run frees its own)."""
    results = []
    for system in systems:
        if system == SYSTEM_SHARING:
            results.append(run_engine(bench, workload, prefix_sharing=True, warmup=warmup, on_event=on_event))
        elif system == SYSTEM_NO_SHARING:
            results.append(run_engine(bench, workload, prefix_sharing=False, warmup=warmup, on_event=on_event))
        elif system in POLICY_SYSTEMS:
            results.append(run_engine(bench, workload, prefix_sharing=False, warmup=warmup, on_event=on_event,
                                      policy=system))
        elif system == SYSTEM_HF:
            from batchllm_cli.bench.hf_peer import run_hf_peer

            if on_event:
                on_event(system, "start", workload.num_requests)
            results.append(
                run_hf_peer(bench.source.hf_config, workload, bench.config.dtype, bench.config.device,
                            warmup=warmup, cb_options=hf_options)  # fmt: skip
            )
            release_memory()
        else:
            raise ValueError(f"unknown system {system!r}")
        if on_event:
            on_event(system, "done", results[-1])
    return results
