"""Rich tables the commands print: the run summary and the plan report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from batchllm_cli.cli.plan import PlanReport
    from batchllm_cli.io.job import JobSummary
    from batchllm_cli.planner.stats import LengthSummary


def _facts_table(title: str) -> Table:
    """A two-column table of named figures (name in bold, value right-aligned)."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    return t


def job_summary_table(s: "JobSummary") -> Table:
    """The final table of `batchllm run`."""
    where = "standard output" if str(s.output_path) == "-" else s.output_path
    t = _facts_table(f"batchllm run → {where}")
    t.add_row("input lines", f"{s.lines:,}")
    if s.resumed:
        t.add_row("already in the output (resumed)", f"{s.resumed:,}")
    t.add_row("answered by this run", f"{s.completed:,}")
    if s.requests_done != s.completed:
        t.add_row("requests (n samples a line)", f"{s.requests_done:,}")
    t.add_row("bad lines (error records)", f"{s.bad_lines:,}")
    t.add_row("prompt tokens", f"{s.prompt_tokens:,}")
    saved = s.prefix_tokens_saved / s.prompt_tokens if s.prompt_tokens else 0.0
    t.add_row("prefix tokens saved", f"{s.prefix_tokens_saved:,} ({saved:.1%})")
    t.add_row("output tokens", f"{s.output_tokens:,}")
    t.add_row("engine time", f"{s.engine_s:.1f} s")
    t.add_row("wall time", f"{s.wall_s:.1f} s")
    if s.engine_s > 0:
        t.add_row("throughput", f"{s.requests_done / s.engine_s:.2f} requests/s, {s.output_tokens_per_s:.1f} output tokens/s")
    return t


def plan_report(report: "PlanReport", top: int) -> Group:
    """The tables of `batchllm plan`."""
    s = report.plan.stats
    t = _facts_table(f"Prefix-sharing plan ({report.model_name})")
    t.add_row("requests", f"{s.num_requests:,}")
    if report.bad_lines:
        t.add_row("bad lines (not planned)", f"{report.bad_lines:,}")
    t.add_row("groups (shared / all)", f"{s.num_shared_groups:,} / {s.num_groups:,}")
    t.add_row("requests in shared groups", f"{s.shared_requests:,}")
    t.add_row("shared prefix length (min/mean/max)", _lengths(s.prefix_len))
    t.add_row("distinct part length (min/mean/max)", _lengths(s.distinct_len))
    t.add_row("prefill tokens without sharing", f"{s.logical_prefill_tokens:,}")
    t.add_row("prefill tokens with this plan", f"{s.processed_prefill_tokens:,}")
    t.add_row("saving", f"[green]{s.saving_ratio:.1%}[/]")
    if s.lru_saving_ratio is not None:
        t.add_row("saving of an LRU prefix cache (file order)", f"{s.lru_saving_ratio:.1%}")
    t.add_row("estimated peak KV blocks / bound", f"{s.est_peak_kv_blocks:,} / {s.kv_bound_blocks:,}")

    hist = Table(title="Sharing degree", title_justify="left")
    hist.add_column("requests per group", justify="right")
    hist.add_column("groups", justify="right")
    width = max((n for _, n in s.degree_histogram), default=1)
    hist.add_column("")
    for degree, n in s.degree_histogram:
        hist.add_row(str(degree), f"{n:,}", "█" * max(1, round(24 * n / width)))

    parts: list = [t, hist]
    shown = s.top_groups[:top]
    if shown:
        g = Table(title=f"Top {len(shown)} groups by tokens saved", title_justify="left", expand=True)
        for name in ("#", "requests", "prefix", "saved"):
            g.add_column(name, justify="right", no_wrap=True)
        g.add_column("prefix preview", overflow="ellipsis", no_wrap=True, ratio=1)
        for tg in shown:
            g.add_row(str(tg.position), str(tg.num_members), f"{tg.prefix_len:,}", f"{tg.tokens_saved:,}",
                      escape(report.prefix_preview(tg.position)))
        parts.append(g)
    return Group(*parts)


def _lengths(x: "LengthSummary") -> str:
    return f"{x.min:,} / {x.mean:,.1f} / {x.max:,}"
