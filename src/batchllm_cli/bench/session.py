"""A bench session: cases (workload, model, KV pool, targets) run one after the other, each
model loaded once for its consecutive cases, the device's rates measured at the start, and the
bench document rewritten after every case, so that a cut-off session keeps what it finished."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from batchllm_cli.bench.kv_pool import KvPool, kv_pool_like, kv_pool_of_tokens, scaled_pool
from batchllm_cli.bench.report import BenchReport
from batchllm_cli.bench.suite import Case

DEFAULT_MODEL = "smollm2-135m"  # what model=None loads (the embedded model)

NoteFn = Callable[[str], None]


@dataclass(frozen=True)
class PoolChoice:
    """The KV pool asked for on the command line (at most one), else each case's own."""

    kv_tokens: int | None = None
    kv_pool_like: str | None = None
    kv_blocks: int | None = None

    def pool_for(self, case: Case, block_size: int) -> KvPool | None:
        """The pool `case` runs in; None: the engine's default size."""
        if self.kv_tokens is not None:
            return kv_pool_of_tokens(self.kv_tokens, block_size)
        if self.kv_pool_like is not None:
            return kv_pool_like(self.kv_pool_like, block_size)
        if self.kv_blocks is not None:
            return KvPool(self.kv_blocks * block_size, self.kv_blocks, f"--kv-blocks {self.kv_blocks}")
        if case.kv_pool_like is not None:
            return scaled_pool(kv_pool_like(case.kv_pool_like, block_size), case.pool_scale, block_size)
        return None


@dataclass(frozen=True)
class Session:
    """What a `batchllm bench` command runs."""

    name: str
    systems: tuple[str, ...]
    cases: tuple[Case, ...]
    pools: PoolChoice = PoolChoice()
    device: str | None = None
    token_budget: int | None = None
    mixed_graph_tokens: int | None = None  # None: the engine config's
    repeats: int = 3
    warmup: bool = True
    profile: bool = False
    header: tuple[tuple[str, Any], ...] = ()  # more fields for the document (scale, command, ...)

    def check(self) -> None:
        """Every case's pool can be sized and its prompts + output fit its model: ConfigError
        before anything is loaded."""
        from batchllm_cli.bench.model import bench_source

        contexts: dict[str | None, int] = {}
        for c in self.cases:
            self.pools.pool_for(c, default_block_size())
            if c.model not in contexts:
                contexts[c.model] = bench_source(c.model).config.max_position
            c.spec.check_context(contexts[c.model], c.model or DEFAULT_MODEL)


def default_block_size() -> int:
    """The engine's block size (configs/engine/default.toml; the same on every device)."""
    from batchllm_cli.engine.config import load_engine_config

    return load_engine_config("cpu").block_size


def run_session(
    session: Session,
    out_path: Path,
    note: NoteFn,
    on_event: Callable[[str, str, Any], None],
    on_report: Callable[[BenchReport, Path], None],
    on_case: Callable[[Case], None] = lambda case: None,
    on_checkpoint: Callable[[BenchReport, Path], None] = lambda partial, path: None,
) -> list[BenchReport]:
    """Runs every case (on_case(case) as it starts); after each, writes the document of the
    finished ones to `out_path` and calls on_report(report, out_path). After every timed run
    the document is written too, with the case under way as a report marked incomplete
    (on_checkpoint(partial, out_path)), so a job stopped by a time limit keeps the runs it
    finished."""
    from batchllm_cli.bench.model import load_bench_model
    from batchllm_cli.bench.rates import measure_rates
    from batchllm_cli.bench.report import environment, write_document
    from batchllm_cli.bench.runner import release_memory

    reports: list[BenchReport] = []
    bench_model: Any = None
    loaded_for: object = object()  # the case model bench_model was loaded for
    header: dict[str, Any] = {}
    for case in session.cases:
        on_case(case)
        if case.model != loaded_for:
            bench_model = None
            release_memory()
            note(f"loading {case.model or 'the embedded model'}")
            bench_model = load_bench_model(case.model, session.device, token_budget=session.token_budget,
                                           mixed_graph_tokens=session.mixed_graph_tokens)
            loaded_for = case.model
        if not header:
            cfg = bench_model.config
            note(f"measuring {cfg.device}: a matmul and a copy")
            rates = measure_rates(cfg.device, cfg.dtype)
            note(f"{cfg.device}: {rates.matmul_flops_per_s / 1e12:.2f} TFLOP/s {rates.dtype} matmul, "
                 f"{rates.copy_bytes_per_s / 1e9:,.0f} GB/s copy (read + write) ({rates.note})")  # fmt: skip
            header = {"name": session.name, **dict(session.header), "repeats": session.repeats,
                      "order": "interleaved: round r runs every system once, in the systems' order",
                      "warmup": "each system ran the whole workload once, untimed, before the timed runs"
                      if session.warmup else "none",
                      "rates": rates.to_dict(), "environment": environment()}  # fmt: skip
        def checkpoint(partial: BenchReport) -> None:
            write_document(out_path, [*reports, partial], header)
            on_checkpoint(partial, out_path)

        reports.append(_run_case(session, case, bench_model, rates, header["environment"], note, on_event,
                                 checkpoint))
        write_document(out_path, reports, header)
        on_report(reports[-1], out_path)
    return reports


def _run_case(session: Session, case: Case, bench_model: Any, rates: Any, env: dict[str, str], note: NoteFn,
              on_event: Callable[[str, str, Any], None],
              checkpoint: Callable[[BenchReport], None]) -> BenchReport:  # fmt: skip
    from batchllm_cli.bench.estimate import estimate_s
    from batchllm_cli.bench.report import workload_record
    from batchllm_cli.bench.runner import BenchOptions, run_workload
    from batchllm_cli.bench.workloads import analytic_saving, generate

    pool = session.pools.pool_for(case, bench_model.config.block_size)
    if pool is not None:
        bench_model = replace(bench_model, config=bench_model.config.with_overrides(num_kv_blocks=pool.blocks))
    config = bench_model.config
    work = generate(case.spec)
    saving = analytic_saving(work, config.min_prefix_tokens)
    runs_each = session.repeats + int(session.warmup) + int(session.profile)
    note(f"{case.spec.name}: {work.num_requests:,} requests, {len(session.systems)} systems x "
         f"({int(session.warmup)} warm-up + {session.repeats} timed) runs on {bench_model.name}"
         + (f", KV pool {pool.tokens:,} tokens ({pool.source})" if pool else ""))  # fmt: skip

    def report(runs: Sequence[Any], counted: dict[str, Any], profiles: dict[str, Any], complete: bool) -> BenchReport:
        pool_blocks = min((r.kv_pool_blocks for r in runs if r.kv_pool_blocks), default=None)
        share = None
        if pool_blocks and work.logical_prefill_tokens:  # below 1: a prefix cache must evict
            share = round(pool_blocks * config.block_size / work.logical_prefill_tokens, 4)
        return BenchReport(
            workload=workload_record(work, saving) | {"kv_pool_share": share},
            model=bench_model.name,
            device=config.device,
            dtype=config.dtype,
            runs=tuple(runs),
            environment=env,
            kv_pool=None if pool is None else pool.to_dict(),
            work={s: w.to_dict() for s, w in counted.items()},
            profiles=profiles,
            targets=case.targets,
            complete=complete,
        )

    done: list[Any] = []
    counted: dict[str, Any] = {}

    def events(system: str, event: str, payload: Any) -> None:
        if event == "counted":
            counted.update(payload)
            if not config.is_cuda and payload:
                note(f"estimate on this CPU: about {estimate_s(payload, rates, runs_each):,.0f} s for this workload")
            return
        on_event(system, event, payload)
        if event == "done":
            done.append(payload)
            checkpoint(report(done, counted, {}, complete=False))

    options = BenchOptions(repeats=session.repeats, warmup=session.warmup, rates=rates, profile=session.profile)
    res = run_workload(bench_model, work, session.systems, options, events)
    return report(res.runs, res.work, res.profiles, complete=True)
