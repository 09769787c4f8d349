"""Benchmark results: one record per run, a workload's report (every run, and per system the
median and spread of each figure), the JSON document of a bench, and its rich table."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from batchllm_cli.bench.stats import Spread
from batchllm_cli.bench.workloads import Saving, Workload
from batchllm_cli.errors import OutputError

REPORT_VERSION = 2
STABLE_SPREAD = 0.10  # repeated runs of a system should stay within 10% of their median
PEERS_FOR_BEST = ("vllm-like", "sglang-like")  # "best-peer" in a target: the better of these


@dataclass(frozen=True)
class RunResult:
    """What one system did in one timed run of a workload. None: not reported for that system."""

    system: str  # "batchllm", "batchllm-no-sharing", "vllm-like", "sglang-like", "hf-generate-batch"
    num_requests: int
    output_tokens: int  # generated, counted from the outputs
    elapsed_s: float  # planning included (ours), the whole generate_batch call (HF)
    logical_prefill_tokens: int
    prefill_tokens: int | None = None  # prompt tokens actually computed
    plan_s: float | None = None
    steps: int | None = None
    kv_pool_blocks: int | None = None
    peak_kv_blocks: int | None = None  # observed during the run
    est_peak_kv_blocks: int | None = None  # the planner's estimate
    short_outputs: int = 0  # requests that stopped before output_len (should be 0)
    repeat: int = 0  # which repeat of this system (0-based)
    order: int = 0  # position of the run in the bench's timed sequence
    model_tokens: int | None = None  # prefill + decode tokens run through the model
    token_budget: int | None = None
    graph_captures: int | None = None  # CUDA graphs captured inside the timed run (0 when warm)
    kernel_compiles: int | None = None  # Triton kernel variants compiled inside it (0 when warm)
    warmup_s: float | None = None  # the engine's start-up warm-up before the run (not timed)
    roofline_s: float | None = None  # the run's work at the measured device rates (roofline.py)
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

    @property
    def mean_step_fill(self) -> float | None:
        """Tokens per step over the token budget, averaged over the run's steps."""
        if not self.steps or self.model_tokens is None or not self.token_budget:
            return None
        return self.model_tokens / (self.steps * self.token_budget)

    @property
    def roofline_fraction(self) -> float | None:
        if self.roofline_s is None or self.elapsed_s <= 0:
            return None
        return self.roofline_s / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["requests_per_s"] = round(self.requests_per_s, 4)
        d["output_tokens_per_s"] = round(self.output_tokens_per_s, 2)
        d["saving_ratio"] = _round(self.saving_ratio, 6)
        d["mean_step_fill"] = _round(self.mean_step_fill, 4)
        d["roofline_fraction"] = _round(self.roofline_fraction, 4)
        d["elapsed_s"] = round(self.elapsed_s, 6)
        d["roofline_s"] = _round(self.roofline_s, 6)
        d["plan_s"] = _round(self.plan_s, 4)
        return d


# The figures a report summarizes per system: name -> how to read it off a run.
FIGURES: dict[str, Callable[[RunResult], float | None]] = {
    "requests_per_s": lambda r: r.requests_per_s,
    "output_tokens_per_s": lambda r: r.output_tokens_per_s,
    "elapsed_s": lambda r: r.elapsed_s,
    "prefill_tokens": lambda r: r.prefill_tokens,
    "saving_ratio": lambda r: r.saving_ratio,
    "peak_kv_blocks": lambda r: r.peak_kv_blocks,
    "steps": lambda r: r.steps,
    "mean_step_fill": lambda r: r.mean_step_fill,
    "roofline_fraction": lambda r: r.roofline_fraction,
}


@dataclass(frozen=True)
class Target:
    """batchllm's median requests/s over `over`'s (a system or "best-peer") >= at_least."""

    over: str
    at_least: float

    def check(self, medians: dict[str, float]) -> dict[str, Any]:
        if self.over == "best-peer":
            peers = {s: medians[s] for s in PEERS_FOR_BEST if s in medians}
            other = max(peers, key=peers.__getitem__) if peers else None
        else:
            other = self.over if self.over in medians else None
        out: dict[str, Any] = {"over": self.over, "at_least": self.at_least}
        if other is None or "batchllm" not in medians or medians[other] <= 0:
            return out | {"ratio": None, "met": None, "why": f"{self.over} did not run"}
        ratio = medians["batchllm"] / medians[other]
        return out | {"vs": other, "ratio": round(ratio, 3), "met": ratio >= self.at_least}


@dataclass(frozen=True)
class BenchReport:
    """A workload, the model and device, every timed run made on it, and what they add up to."""

    workload: dict[str, Any]  # name, spec fields, requests, analytic saving
    model: str
    device: str
    dtype: str
    runs: tuple[RunResult, ...]
    environment: dict[str, str] = field(default_factory=dict)
    kv_pool: dict[str, Any] | None = None  # tokens, blocks, source (kv_pool.KvPool.to_dict)
    work: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> roofline.WorkCount
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> profile.py's
    targets: tuple[Target, ...] = ()
    complete: bool = True  # False: written after a run while the workload's runs go on

    def systems(self) -> list[str]:
        """The systems in the order they first ran."""
        return list(dict.fromkeys(r.system for r in self.runs))

    def summary(self) -> dict[str, dict[str, Spread]]:
        """system -> figure -> median and spread over that system's runs."""
        out: dict[str, dict[str, Spread]] = {}
        for system in self.systems():
            runs = [r for r in self.runs if r.system == system]
            figures = {}
            for name, read in FIGURES.items():
                values = [v for v in (read(r) for r in runs) if v is not None]
                if values:
                    figures[name] = Spread.of(values)
            out[system] = figures
        return out

    def medians(self, figure: str = "requests_per_s") -> dict[str, float]:
        return {s: f[figure].median for s, f in self.summary().items() if figure in f}

    def ratios(self) -> dict[str, float]:
        """batchllm's median requests/s over each other system's."""
        med = self.medians()
        first = "batchllm" if "batchllm" in med else next(iter(med), None)
        if first is None or med[first] <= 0:
            return {}
        return {f"{first}/{s}": round(med[first] / v, 3) for s, v in med.items() if s != first and v > 0}

    def unstable(self) -> list[str]:
        """Systems whose repeated requests/s strayed more than STABLE_SPREAD from the median."""
        return [s for s, f in self.summary().items() if f["requests_per_s"].n > 1 and f["requests_per_s"].rel_spread > STABLE_SPREAD]

    def to_dict(self) -> dict[str, Any]:
        med = self.medians()
        return {
            "workload": self.workload,
            "complete": self.complete,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "kv_pool": self.kv_pool,
            "runs": [r.to_dict() for r in self.runs],
            "summary": {s: {k: v.to_dict() for k, v in f.items()} for s, f in self.summary().items()},
            "ratios": self.ratios(),
            "speedups": self.ratios(),  # version 1's name
            "unstable": self.unstable(),
            "targets": [t.check(med) for t in self.targets],
            "work": self.work,
            "profiles": self.profiles,
            "environment": self.environment,
        }

    def write(self, path: str | Path) -> Path:
        """This report alone as a bench document (see write_document)."""
        return write_document(path, [self], {"environment": self.environment})


def write_document(path: str | Path, reports: list[BenchReport], header: dict[str, Any]) -> Path:
    """Writes {version, header fields, reports: [...]} as JSON (parent folders made, replaced
    whole); raises OutputError when it cannot."""
    path = Path(path)
    doc = {"version": REPORT_VERSION, **header, "reports": [r.to_dict() for r in reports]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
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
    """requests/s of the first run (ours, sharing on) over each other run (one run each)."""
    return BenchReport({}, "", "", "", runs).ratios()


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


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
