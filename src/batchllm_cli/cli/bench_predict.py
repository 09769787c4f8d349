"""`batchllm bench --predict GPU`: the dry-run roofline of each case's systems, as a table and a
JSON document (bench/predict.py says what the figures are)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from batchllm_cli.errors import ConfigError, OutputError


def run_predictions(session: Any, gpu: str, out_path: Path, console: Console, note: Any) -> Path:
    """Dry-runs every case of `session` on `gpu`'s rates; prints one table, writes the JSON."""
    from batchllm_cli.bench.predict import gpu_rates, predict_case
    from batchllm_cli.bench.session import default_block_size

    rates = gpu_rates(gpu)
    block_size = default_block_size()
    cases = []
    table = Table(title=f"{session.name}: dry runs at the roofline of {gpu} ({rates.matmul_flops_per_s / 1e12:,.0f} "
                        f"TFLOP/s bf16, {rates.copy_bytes_per_s / 1e9:,.0f} GB/s); predicted, not measured")
    for col in ("workload", "model", "requests", "KV pool", "system", "steps", "prefill", "unique KV", "ideal s", "x batchllm"):
        table.add_column(col, justify="left" if col in ("workload", "model", "KV pool", "system") else "right")
    for case in session.cases:
        pool = session.pools.pool_for(case, block_size)
        if pool is None:
            raise ConfigError(f"--predict needs a KV pool for {case.spec.name}: a suite case's, --kv-tokens or --kv-pool-like")
        note(f"{case.spec.name}: dry runs of {', '.join(session.systems)} ({case.model}, KV pool {pool.tokens:,} tokens)")
        rows = predict_case(case, session.systems, pool.blocks, rates, session.token_budget)
        ours = next((p.ideal_s for p in rows if p.system == "batchllm"), None)
        for k, p in enumerate(rows):
            ratio = "" if ours is None or p.system == "batchllm" else f"{p.ideal_s / ours:.2f}x"
            head = (case.spec.name, case.model, f"{p.num_requests:,}", f"{pool.tokens:,}") if k == 0 else ("",) * 4
            table.add_row(*head, p.system, f"{p.work.steps:,}", f"{p.work.prefill_tokens:,}",
                          f"{p.work.kv_bytes / 1e9:,.0f} GB", f"{p.ideal_s:,.1f}", ratio)  # fmt: skip
        table.add_section()
        cases.append({"workload": case.spec.name, "model": case.model, "kv_pool": pool.to_dict(),
                      "targets": [{"over": t.over, "at_least": t.at_least} for t in case.targets],
                      "systems": [p.to_dict() for p in rows]})  # fmt: skip
    console.print(table)
    doc = {"kind": "prediction", "gpu": gpu, "rates": rates.to_dict(), "name": session.name,
           "what": "dry runs of each system's scheduler; ideal_s = prefill FLOPs / matmul rate + "
                   "(weights + unique KV bytes) / copy rate, summed over steps", "cases": cases}  # fmt: skip
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the prediction to {out_path}: {exc}") from exc
    return out_path
