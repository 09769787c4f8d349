"""The rich table of a workload's report: per system, the median [min-max] of each figure."""

from __future__ import annotations

from typing import Any

from batchllm_cli.bench.report import BenchReport
from batchllm_cli.bench.stats import Spread


def render_table(report: BenchReport) -> Any:
    """A rich Table (the CLI prints it; the library never does)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    w = report.workload
    summary = report.summary()
    repeats = max((f["requests_per_s"].n for f in summary.values() if "requests_per_s" in f), default=0)
    caption = [
        f"median [min-max] of {repeats} run(s) per system" if repeats > 1 else "one run per system",
        "prefill: prompt tokens computed / logical",
        "fill: tokens per step / token budget",
        "roofline: the run's work at the measured rates / its time",
    ]
    if report.kv_pool:
        caption.append(f"KV pool {report.kv_pool['tokens']:,} tokens ({report.kv_pool['source']})")
    else:
        pools = sorted({r.kv_pool_blocks for r in report.runs if r.kv_pool_blocks})
        if pools:
            caption.append(f"KV pool {', '.join(f'{p:,}' for p in pools)} blocks")
    table = Table(
        title=f"{w['name']}: {w['num_requests']:,} requests, {report.model}, {report.device} {report.dtype}",
        caption=escape("; ".join(caption)),
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("system", no_wrap=True)
    for col in ("req/s", "out tok/s", "prefill", "saving", "peak KV", "steps", "fill", "roofline", "ratio"):
        table.add_column(col, justify="right", no_wrap=True)
    ratios = report.ratios()
    first = next(iter(ratios), "/").split("/")[0]
    logical = w.get("logical_prefill_tokens", 0)
    for system, f in summary.items():
        ratio = ratios.get(f"{first}/{system}")
        table.add_row(
            escape(system),
            _fmt(f, "requests_per_s", "{:.2f}"),
            _fmt(f, "output_tokens_per_s", "{:,.0f}"),
            "-" if "prefill_tokens" not in f else f"{f['prefill_tokens'].format(lambda v: count(int(v)))}/{count(logical)}",
            _fmt(f, "saving_ratio", "{:.1%}"),
            _fmt(f, "peak_kv_blocks", "{:,.0f}"),
            _fmt(f, "steps", "{:,.0f}"),
            _fmt(f, "mean_step_fill", "{:.0%}"),
            _fmt(f, "roofline_fraction", "{:.1%}"),
            "" if ratio is None else f"{ratio:.2f}x",
        )
    return table


def _fmt(figures: dict[str, Spread], name: str, fmt: str) -> str:
    return figures[name].format(fmt) if name in figures else "-"


def count(n: int) -> str:
    """A token count in at most five characters: 320, 56.3k, 14.1M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
