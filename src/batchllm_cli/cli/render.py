"""Rich tables the commands print: the run summary and the plan report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from batchllm_cli.io.job import JobSummary


def job_summary_table(s: "JobSummary") -> Table:
    """The final table of `batchllm run`."""
    t = Table(title=f"batchllm run → {s.output_path}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("input lines", f"{s.lines:,}")
    if s.resumed:
        t.add_row("already in the output (resumed)", f"{s.resumed:,}")
    t.add_row("answered by this run", f"{s.completed:,}")
    t.add_row("bad lines (error records)", f"{s.bad_lines:,}")
    t.add_row("prompt tokens", f"{s.prompt_tokens:,}")
    saved = s.prefix_tokens_saved / s.prompt_tokens if s.prompt_tokens else 0.0
    t.add_row("prefix tokens saved", f"{s.prefix_tokens_saved:,} ({saved:.1%})")
    t.add_row("output tokens", f"{s.output_tokens:,}")
    t.add_row("engine time", f"{s.engine_s:.1f} s")
    t.add_row("wall time", f"{s.wall_s:.1f} s")
    if s.engine_s > 0:
        t.add_row("throughput", f"{s.completed / s.engine_s:.2f} requests/s, {s.output_tokens_per_s:.1f} output tokens/s")
    return t
