"""README performance-table rows from a saved bench document (`batchllm bench --readme-table`),
so the figures in the README are the report's, never typed by hand.

Rows fit the README's table: | what | setup | batchllm | comparison |.
"""

from __future__ import annotations

from typing import Any

SHARING_OFF = "batchllm-no-sharing"


def readme_rows(doc: dict[str, Any], source: str) -> list[str]:
    """One markdown row per workload report of `doc`; `source` names the JSON file."""
    env = doc.get("environment", {})
    where = env.get("gpu") or "CPU"
    date = str(env.get("time", ""))[:10]
    rows = []
    for rep in doc.get("reports", []):
        summary = rep["summary"]
        if "batchllm" not in summary:
            continue
        w = rep["workload"]
        runs = summary["batchllm"]["requests_per_s"]["n"]
        pool = f", KV pool {rep['kv_pool']['tokens']:,} tokens ({rep['kv_pool']['source'].split(':')[0]})" if rep.get("kv_pool") else ""
        setup = (
            f"{where}, {rep['model']}, {rep['dtype']}, {w['num_requests']:,} requests{pool}; "
            f"median [min-max] of {runs} interleaved runs, {date}; [raw]({source})"
        )
        if rep.get("complete") is False:  # written after a run; the job stopped before the rest
            setup += "; **incomplete**: the job stopped during this workload, these are the runs it finished"
        others = []
        for system, figs in summary.items():
            if system == "batchllm":
                continue
            ratio = rep.get("ratios", {}).get(f"batchllm/{system}")
            name = "sharing off" if system == SHARING_OFF else system
            others.append(f"{name} {_spread(figs['requests_per_s'])}" + (f" ({ratio:.2f}x)" if ratio else ""))
        rows.append(
            f"| {w['name']}: {w['description']} | {setup} | **{_spread(summary['batchllm']['requests_per_s'])} "
            f"requests/s** | {'; '.join(others)} |"
        )
    return rows


def _spread(s: dict[str, Any]) -> str:
    med, lo, hi = s["median"], s["min"], s["max"]
    if s.get("n", 1) < 2 or f"{lo:.2f}" == f"{hi:.2f}":
        return f"{med:.2f}"
    return f"{med:.2f} [{lo:.2f}-{hi:.2f}]"
