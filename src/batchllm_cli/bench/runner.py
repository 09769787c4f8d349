"""Runs a workload through our engine's settings (BatchLLM with sharing on and off, the peers'
scheduling) and through the HF peer: warmed up, repeated, interleaved.

Every system sees the same token-id prompts in the same shuffled order, greedy, EOS ignored, so
that each request produces exactly `output_len` tokens. The engine systems share one model
runner (LLM.with_scheduling): one KV pool of one size, and every CUDA graph captured once.
Before any timing each system runs the whole workload once, untimed: every Triton kernel variant
it will launch is compiled and every decode graph it will replay is captured, at the run's own
batch sizes. Then the timed runs go round the systems, A B C A B C ..., so that a drift of the
machine (clocks, other tenants) touches every system alike. A timed run includes planning, as a
user's run does. The HF peer builds its own model and runs after the engine systems, its runs
back to back (see hf_peer.py).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from batchllm_cli.bench.model import BenchModel
from batchllm_cli.bench.report import RunResult
from batchllm_cli.bench.roofline import DeviceRates, ModelCost, StepCounter, WorkCount
from batchllm_cli.bench.workloads import Workload
from batchllm_cli.types import SamplingParams

SYSTEM_SHARING = "batchllm"
SYSTEM_NO_SHARING = "batchllm-no-sharing"
SYSTEM_HF = "hf-generate-batch"
POLICY_SYSTEMS = ("vllm-like", "sglang-like")  # the peers' scheduling on our engine (engine/caching.py)
# The engine settings of each system on the shared runner (the peers ignore the plan's groups,
# so they plan without sharing: it costs nothing).
ENGINE_SYSTEMS: dict[str, dict[str, Any]] = {
    SYSTEM_SHARING: {"policy": "batchllm", "prefix_sharing": True},
    SYSTEM_NO_SHARING: {"policy": "batchllm", "prefix_sharing": False},
    "vllm-like": {"policy": "vllm-like", "prefix_sharing": False},
    "sglang-like": {"policy": "sglang-like", "prefix_sharing": False},
}
ALL_SYSTEMS = (*ENGINE_SYSTEMS, SYSTEM_HF)

# (system, event, payload) for a CLI to draw: "count" (None), then ("", "counted", {system:
# WorkCount}), "warmup" (None), "start" ((repeat, num_requests)), "progress" (EngineProgress),
# "done" (RunResult), "profile" (None)
EventFn = Callable[[str, str, Any], None]


@dataclass(frozen=True)
class BenchOptions:
    """How a workload is run: repeats, warm-up, the work count for the roofline, profiling."""

    repeats: int = 3
    warmup: bool = True
    rates: DeviceRates | None = None  # None: no roofline fraction
    count_work: bool = True  # simulate each system's steps for the roofline and the cross-checks
    profile: bool = False  # one extra run per engine system under the torch profiler
    hf_options: dict[str, Any] | None = None


@dataclass
class WorkloadRuns:
    """Every timed run of a workload, and per system its work count and profile."""

    runs: list[RunResult] = field(default_factory=list)
    work: dict[str, WorkCount] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def timing_order(systems: Sequence[str], repeats: int) -> list[tuple[str, int]]:
    """(system, repeat) in the order the timed runs go: round by round, each system once a round."""
    return [(s, rep) for rep in range(repeats) for s in systems]


def sampling_for(workload: Workload) -> SamplingParams:
    """Greedy, exactly output_len tokens per request."""
    return SamplingParams(max_tokens=workload.spec.output_len, temperature=0.0, ignore_eos=True)


def run_workload(
    bench: BenchModel,
    workload: Workload,
    systems: Sequence[str],
    options: BenchOptions = BenchOptions(),
    on_event: EventFn | None = None,
) -> WorkloadRuns:
    """Warm-up, then `options.repeats` interleaved timed runs of every system in `systems`."""
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}")
    emit = on_event or (lambda *_: None)
    out = WorkloadRuns()
    engine_systems = [s for s in systems if s in ENGINE_SYSTEMS]
    if engine_systems:
        _run_engine_systems(bench, workload, engine_systems, options, emit, out)
    if SYSTEM_HF in systems:
        from batchllm_cli.bench.hf_peer import run_hf_peer

        for rep in range(options.repeats):
            emit(SYSTEM_HF, "start", (rep, workload.num_requests))
            r = run_hf_peer(bench.source.hf_config, workload, bench.config.dtype, bench.config.device,
                            warmup=options.warmup, cb_options=options.hf_options)  # fmt: skip
            out.runs.append(_replace(r, repeat=rep, order=len(out.runs)))
            release_memory()
            emit(SYSTEM_HF, "done", out.runs[-1])
    return out


def _run_engine_systems(
    bench: BenchModel, workload: Workload, systems: list[str], options: BenchOptions, emit: EventFn, out: WorkloadRuns
) -> None:
    from batchllm_cli.engine.llm import LLM

    llm = LLM.from_loaded(bench.source, bench.model, config=bench.config)
    views: dict[str, Any] = {}
    try:
        views.update((s, llm.with_scheduling(**ENGINE_SYSTEMS[s])) for s in systems)
        requests = llm.make_requests(list(workload.prompts), sampling_for(workload))
        if options.count_work:
            cost = ModelCost.of(llm.model_config, llm.config.dtype)
            for s in systems:
                emit(s, "count", None)
                out.work[s] = count_work(views[s], requests, cost)
            emit("", "counted", dict(out.work))
        if options.warmup:
            for s in systems:
                emit(s, "warmup", None)
                _execute(views[s], workload, requests, s, None)
        for s, rep in timing_order(systems, options.repeats):
            emit(s, "start", (rep, workload.num_requests))
            r = _execute(views[s], workload, requests, s, lambda p, s=s: emit(s, "progress", p))
            r = _replace(r, repeat=rep, order=len(out.runs), **_checks(r, out.work.get(s), options.rates))
            out.runs.append(r)
            emit(s, "done", r)
        if options.profile:
            from batchllm_cli.bench.profile import profile_run, with_timed_wall

            for s in systems:
                emit(s, "profile", None)
                profiled = profile_run(lambda s=s: _execute(views[s], workload, requests, s, None), llm.config.device)
                out.profiles[s] = with_timed_wall(profiled, [r.elapsed_s for r in out.runs if r.system == s])
    finally:
        views.clear()  # the views hold the runner and its KV cache too
        del llm
        release_memory()


def count_work(llm: Any, requests: Sequence[Any], cost: ModelCost) -> WorkCount:
    """The steps `llm`'s settings take on `requests` (a dry run of its scheduler, no model), with
    the FLOPs and bytes the roofline counts."""
    from batchllm_cli.engine.engine import steps_ahead
    from batchllm_cli.engine.simulate import simulate

    plan = llm.plan(requests)
    counter = StepCounter(cost, llm.config.block_size)
    sim = simulate(
        requests, plan.groups, num_blocks=llm.num_kv_blocks, block_size=llm.config.block_size,
        token_budget=llm.config.token_budget, memory_bound=llm.config.memory_bound,
        policy=llm.config.policy, max_running=llm.config.max_running, ahead=steps_ahead(llm.runner),
        on_step=counter,
    )  # fmt: skip
    return counter.result(sim.peak_blocks)


def _checks(r: RunResult, work: WorkCount | None, rates: DeviceRates | None) -> dict[str, Any]:
    """The roofline time of a run, and a note when the run did not take the counted steps."""
    if work is None:
        return {}
    fields: dict[str, Any] = {}
    if rates is not None:
        fields["roofline_s"] = work.ideal_s(rates)
    if r.steps is not None and r.steps != work.steps:
        fields["notes"] = (*r.notes, f"took {r.steps} steps; the dry run of its scheduler counted {work.steps}")
    return fields


def _execute(llm: Any, workload: Workload, requests: Sequence[Any], system: str, on_progress: Callable[[Any], None] | None) -> RunResult:
    """One run of `requests` on `llm` (its scheduling settings), planning included in the time."""
    peak = 0
    last: Any = None

    def progress(p: Any) -> None:
        nonlocal peak, last
        peak = max(peak, p.kv_blocks_used)
        last = p
        if on_progress is not None:
            on_progress(p)

    warmup = llm.warm_up(requests, llm.plan(requests)) if llm.config.warmup else None  # outside the timing
    captures_before, compiles_before = graph_captures(llm), kernel_compiles(llm)
    _sync(llm)
    start = time.perf_counter()
    plan = llm.plan(requests)
    plan_s = time.perf_counter() - start
    output_tokens = short = 0
    for c in llm.stream(requests, plan, on_progress=progress, warm=False):
        output_tokens += c.completion_tokens
        short += c.completion_tokens < workload.spec.output_len
    _sync(llm)
    elapsed = time.perf_counter() - start
    captures_after, compiles_after = graph_captures(llm), kernel_compiles(llm)
    return RunResult(
        system=system,
        num_requests=len(requests),
        output_tokens=output_tokens,
        elapsed_s=elapsed,
        logical_prefill_tokens=workload.logical_prefill_tokens,
        prefill_tokens=None if last is None else last.prefill_tokens,
        plan_s=plan_s,
        steps=None if last is None else last.steps,
        kv_pool_blocks=int(llm.num_kv_blocks),
        peak_kv_blocks=peak,
        est_peak_kv_blocks=plan.stats.est_peak_kv_blocks,
        short_outputs=short,
        model_tokens=None if last is None else last.model_tokens,
        token_budget=llm.config.token_budget,
        graph_captures=None if captures_before is None else captures_after - captures_before,
        kernel_compiles=None if compiles_before is None else compiles_after - compiles_before,
        warmup_s=None if warmup is None else round(warmup.seconds, 3),
    )


def graph_captures(llm: Any) -> int | None:
    """CUDA graphs the LLM's runner has captured so far; None when it uses none."""
    runner = getattr(llm, "runner", None)
    return None if runner is None else runner.graph_captures


def kernel_compiles(llm: Any) -> int | None:
    """Triton kernel variants compiled in this process so far (CUDA only; None on a CPU)."""
    if not llm.config.is_cuda:
        return None
    from batchllm_kernels.triton_util import kernel_variants_compiled

    return kernel_variants_compiled()


def _sync(llm: Any) -> None:
    if llm.config.is_cuda:
        import torch

        torch.cuda.synchronize()


def _replace(r: RunResult, **changes: Any) -> RunResult:
    from dataclasses import replace

    return replace(r, **changes)


def release_memory() -> None:
    """Frees what a finished run held (its KV pool) before the next one sizes its own."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
