"""Benchmark results: one record per run, the JSON document of a bench, and its rich table."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchllm_cli.bench.workloads import Saving, Workload
from batchllm_cli.errors import OutputError

REPORT_VERSION = 1


@dataclass(frozen=True)
class RunResult:
    """What one system did on one workload. None: the system does not report that figure."""

    system: str  # "batchllm", "batchllm-no-sharing", "hf-generate-batch"
    num_requests: int
    output_tokens: int  # generated, counted from the outputs
    elapsed_s: float  # planning included (ours), the whole generate_batch call (HF)
    logical_prefill_tokens: int
    prefill_tokens: int | None = None  # prompt tokens actually computed
    plan_s: float | None = None
    steps: int | None = None
    kv_pool_blocks: int | None = None
    peak_kv_blocks: int | None = None  # observed during the run, when the engine reports it
    est_peak_kv_blocks: int | None = None  # the planner's estimate
    short_outputs: int = 0  # requests that stopped before output_len (should be 0)
    notes: tuple[str, ...] = ()

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def saving_ratio(self) -> float | None:
        if self.prefill_tokens is None or not self.logical_prefill_tokens:
            return None
        return 1 - self.prefill_tokens / self.logical_prefill_tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["requests_per_s"] = round(self.requests_per_s, 4)
        d["output_tokens_per_s"] = round(self.output_tokens_per_s, 2)
        d["saving_ratio"] = None if self.saving_ratio is None else round(self.saving_ratio, 6)
        d["elapsed_s"] = round(self.elapsed_s, 6)
        if self.plan_s is not None:
            d["plan_s"] = round(self.plan_s, 4)
        return d


@dataclass(frozen=True)
class BenchReport:
    """A workload, the machine, and the runs made on it."""

    workload: dict[str, Any]  # name, spec fields, requests, analytic saving
    model: str
    device: str
    dtype: str
    runs: tuple[RunResult, ...]
    environment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "workload": self.workload,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "environment": self.environment,
            "runs": [r.to_dict() for r in self.runs],
            "speedups": speedups(self.runs),
        }

    def write(self, path: str | Path) -> Path:
        """Writes the JSON document (parent folders made); raises OutputError when it cannot."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            tmp.replace(path)
        except OSError as exc:
            raise OutputError(f"cannot write the bench results to {path}: {exc}") from exc
        return path


def workload_record(workload: Workload, saving: Saving) -> dict[str, Any]:
    """The workload part of a report: what was run, and the saving the planner should reach."""
    spec = workload.spec
    return {
        "name": spec.name,
        "description": spec.description,
        "paper": spec.paper,
        "num_requests": workload.num_requests,
        "num_groups": spec.num_groups,
        "output_len": spec.output_len,
        "logical_prefill_tokens": workload.logical_prefill_tokens,
        "analytic_processed_prefill_tokens": saving.processed_prefill_tokens,
        "analytic_saving_ratio": round(saving.ratio, 6),
    }


def speedups(runs: tuple[RunResult, ...]) -> dict[str, float]:
    """requests/s of the first run (ours, sharing on) over each other run."""
    if not runs or runs[0].requests_per_s <= 0:
        return {}
    first = runs[0]
    return {
        f"{first.system}/{r.system}": round(first.requests_per_s / r.requests_per_s, 3)
        for r in runs[1:]
        if r.requests_per_s > 0
    }


def environment() -> dict[str, str]:
    """Versions and the GPU name: timings only compare within one environment."""
    env = {"python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    for mod in ("transformers", "triton"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return env


def render_table(report: BenchReport) -> Any:
    """A rich Table of the runs (the CLI prints it; the library never does)."""
    from rich import box
    from rich.table import Table

    w = report.workload
    pools = sorted({r.kv_pool_blocks for r in report.runs if r.kv_pool_blocks})
    caption = "prefill: prompt tokens computed / logical; ~: the planner's estimate"
    if pools:
        caption += f"; KV pool {', '.join(f'{p:,}' for p in pools)} blocks"
    table = Table(
        title=f"{w['name']}: {w['num_requests']:,} requests, {report.model}, {report.device} {report.dtype}",
        caption=caption,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("system", no_wrap=True)
    for col in ("req/s", "out tok/s", "secs", "prefill", "saving", "steps", "peak KV"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report.runs:
        if r.peak_kv_blocks is not None:
            peak = f"{r.peak_kv_blocks:,}"
        else:
            peak = "-" if r.est_peak_kv_blocks is None else f"~{r.est_peak_kv_blocks:,}"
        table.add_row(
            r.system,
            f"{r.requests_per_s:.2f}",
            f"{r.output_tokens_per_s:,.0f}",
            f"{r.elapsed_s:.2f}",
            "-" if r.prefill_tokens is None else f"{_count(r.prefill_tokens)}/{_count(r.logical_prefill_tokens)}",
            "-" if r.saving_ratio is None else f"{r.saving_ratio:.1%}",
            "-" if r.steps is None else f"{r.steps:,}",
            peak,
        )
    return table


def _count(n: int) -> str:
    """A token count in at most five characters: 320, 56.3k, 14.1M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
