"""Launch-setting study of the prefix-shared decode kernel on a GPU (issue 7's open targets).

Times each variant as a CUDA graph replay (no host launch gaps: what the engine's decode graphs
run), and splits the default launch into its kernels with the profiler.

    python benchmarks/tune_decode.py --out results.jsonl [--cases 4x64,1x64] [--budget-s 400]
        [--variants '{"name": {"block_n": 128}}'] [--split] [--prefill]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import (  # noqa: E402
    CASES, DIM, PREFILL_CASES, Case, eager_us, copy_bandwidth, graph_us, prefill_step,
)


def kernel_split(fn, reps: int = 20) -> dict[str, float]:
    """GPU time per kernel name (µs per call), without launch gaps."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" or getattr(ev, "self_device_time_total", 0):
            t = getattr(ev, "self_device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
            if t:
                out[ev.key[:40]] = round(t / reps, 1)
    return out


def variants(case: Case) -> dict[str, dict]:
    """The launcher's choice, the previous defaults, and a grid of tile widths, stages, splits."""
    v: dict[str, dict] = {"default": {}, "previous": {"heads_first": False, "overlap_own": False,
                                                      "merge_heads": 64}}
    for bn in (64, 128):
        for st in (2, 3):
            for sp in (None, 1, 2, 3, 4, 8):
                v[f"bn{bn}_st{st}_sp{sp or 'auto'}"] = {"block_n": bn, "num_stages": st, "num_splits": sp}
    if case.degree >= 16:
        for bm in (32, 64, 128):
            v[f"bm{bm}"] = {"block_m": bm}
    return v


PREFILL_SWEEP = {f"bm{bm}/bn{bn}/w{w}/st{st}": {"block_m": bm, "block_n": bn, "num_warps": w, "num_stages": st}
                 for bm, bn, w in [(64, 64, 4), (128, 64, 8), (128, 128, 8), (64, 128, 4), (128, 32, 4),
                                   (128, 64, 4)]
                 for st in (2, 3, 4)}


def prefill_sweep(log, deadline: float, sweep: dict[str, dict]) -> None:
    from batchllm_kernels.prefill import prefill_attention

    for items, prefix in PREFILL_CASES:
        q, kc, vc, meta, _ = prefill_step(items, prefix)
        out = torch.empty_like(q)
        row = {"prefill": f"{len(items)}x{items[0][0]} after {prefix}"}
        ref = None
        for key, launch in sweep.items():
            if time.time() > deadline:
                row["stopped"] = "budget"
                break
            try:
                fn = lambda: prefill_attention(q, kc, vc, meta, DIM ** -0.5, out, **launch)  # noqa: E731
                row[key] = round(graph_us(fn), 1)
                if ref is None:
                    ref = out.float().clone()
                elif float((out.float() - ref).abs().max()) > 2e-2:
                    row[key + "_maxdiff"] = float((out.float() - ref).abs().max())
            except Exception as exc:  # noqa: BLE001
                row[key] = f"{type(exc).__name__}: {str(exc)[:100]}"
        log(row)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", default="4x64,1x64,16x16,4x16,256x1,64x1")
    ap.add_argument("--layouts", default="token", help="cache layouts: token and/or head (see bench_attention.Case)")
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--variants", default="",
                    help='JSON {name: launch kwargs} to time instead of the built-in grid')
    ap.add_argument("--split", action="store_true", help="GPU time per kernel for every variant")
    ap.add_argument("--prefill", action="store_true", help="also sweep the prefill kernel's tiles")
    ap.add_argument("--prefill-variants", default="",
                    help="JSON {name: launch kwargs} for the prefill sweep instead of its tile grid")
    args = ap.parse_args()
    deadline = time.time() + args.budget_s
    want = args.cases.split(",")
    specs = {f"{g}x{d}": (g, d, p, s) for g, d, p, s in CASES}
    specs["256x1p16"] = (256, 1, 16, 2184)  # plain decodes: 16-token prefix, long own segments
    with args.out.open("a") as fh:
        def log(row):
            print(json.dumps(row), flush=True)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        log({"copy_GBps": round(copy_bandwidth(), 1), "device": torch.cuda.get_device_name()})
        for layout in args.layouts.split(","):
            for name in want:
                g, d, p, s = specs[name]
                case = Case(g, d, p, s, "cuda", layout=layout)
                row = {"case": name, "P": p, "layout": layout, "unique_MB": round(case.unique_bytes / 1e6, 1)}
                fn, out = case.ours()
                row["eager_default"] = round(eager_us(fn), 1)
                row["split_default"] = kernel_split(fn)
                ref = out.float().clone()
                if layout == "token" and d == 1:
                    sd, _ = case.sdpa()
                    row["sdpa_graph"] = round(graph_us(sd), 1)
                    row["sdpa_eager"] = round(eager_us(sd), 1)
                todo = {"default": {}, **json.loads(args.variants)} if args.variants else variants(case)
                for key, launch in todo.items():
                    if time.time() > deadline:
                        row["stopped"] = "budget"
                        break
                    try:
                        fn, out = case.ours(**launch)
                        row[key] = round(graph_us(fn), 1)
                        if args.split:
                            row[key + "_k"] = list(kernel_split(fn, reps=5).values())
                        err = float((out.float() - ref).abs().max())
                        if err > 2e-2:
                            row[key + "_maxdiff"] = err
                    except Exception as exc:  # noqa: BLE001 - a failing variant is a result
                        row[key] = f"{type(exc).__name__}: {str(exc)[:100]}"
                log(row)
                del case
                torch.cuda.empty_cache()
        if args.prefill:
            sweep = json.loads(args.prefill_variants) if args.prefill_variants else PREFILL_SWEEP
            prefill_sweep(log, deadline + 120, sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
