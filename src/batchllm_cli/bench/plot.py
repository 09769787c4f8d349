"""A PNG of a bench document: requests/s per system per workload, min-max spread as error bars.

matplotlib is optional (`pip install "batchllm-cli[plot]"`) and imported only here, only when a
plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from batchllm_cli.errors import ConfigError, OutputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = 3  # workloads per row of panels


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_plot(doc: dict[str, Any], path: str | Path) -> Path:
    """Draws one panel per workload (each its own requests/s scale) into the PNG `path`."""
    if not have_matplotlib():
        raise ConfigError('plotting needs matplotlib: pip install "batchllm-cli[plot]"')
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = doc.get("reports", [])
    if not reports:
        raise ConfigError("the bench document has no reports to plot")
    cols = min(COLUMNS, len(reports))
    rows = math.ceil(len(reports) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, 4.2 * cols), 3.4 * rows + 0.4), squeeze=False)
    for ax, rep in zip(axes.flat, reports):
        _panel(ax, rep)
    for ax in list(axes.flat)[len(reports):]:
        ax.axis("off")
    first = reports[0]
    where = doc.get("environment", {}).get("gpu") or first.get("device", "")
    fig.suptitle(f"batchllm bench on {where}\nrequests/s: median, bars from the slowest to the fastest run", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=110)
    except OSError as exc:
        raise OutputError(f"cannot write the plot to {path}: {exc}") from exc
    finally:
        plt.close(fig)
    return path


def _panel(ax: Any, rep: dict[str, Any]) -> None:
    summary = rep["summary"]
    systems = list(summary)
    med = [summary[s]["requests_per_s"]["median"] for s in systems]
    lo = [m - summary[s]["requests_per_s"]["min"] for s, m in zip(systems, med)]
    hi = [summary[s]["requests_per_s"]["max"] - m for s, m in zip(systems, med)]
    colors = [f"C{i}" for i in range(len(systems))]
    ax.bar(range(len(systems)), med, yerr=[lo, hi], capsize=4, color=colors)
    ax.set_xticks(range(len(systems)), [s.replace("batchllm-", "batchllm\n") for s in systems], fontsize=7)
    ax.set_ylabel("requests/s", fontsize=8)
    w = rep["workload"]
    ax.set_title(f"{w['name']} ({w['num_requests']:,} req, {rep['model']})", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
