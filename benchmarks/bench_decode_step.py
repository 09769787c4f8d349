"""Decode step time with CUDA graphs vs without, on random-weight Llama shapes (GPU).

Each case is G groups of D requests sharing a P-token prefix, each with S tokens of its own,
generating T tokens (ignore_eos), so that batch = G x D decodes run together once everything
is prefilled. A step's time is the wall time between two engine progress callbacks (the model
forward, sampling and the host's scheduling: what a decode step costs the job), taken over the
decode-only steps; graphs are captured on the first step of each shape, so the median is used.

    python benchmarks/bench_decode_step.py --out results/decode_step.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

CASES = [  # (groups, per group, prefix, own, new tokens): batch 64 and 256
    (16, 4, 1000, 100, 64),
    (16, 16, 1000, 100, 64),
]


def _prompts(groups: int, degree: int, prefix: int, own: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(groups):
        shared = torch.randint(100, vocab - 100, (prefix,), generator=gen).tolist()
        out += [shared + torch.randint(100, vocab - 100, (own,), generator=gen).tolist() for _ in range(degree)]
    return out


def _decode_step_times(llm, prompts: list[list[int]], new_tokens: int) -> tuple[list[float], float]:  # noqa: ANN001
    """Times of the decode-only steps, and the whole run's seconds."""
    from batchllm_cli.types import SamplingParams

    marks: list[tuple[float, int, int]] = []  # (time, prefill tokens, steps)

    def on_progress(p) -> None:  # noqa: ANN001
        marks.append((time.perf_counter(), p.prefill_tokens, p.steps))

    t0 = time.perf_counter()
    llm.generate(prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True), on_progress=on_progress)
    total = time.perf_counter() - t0
    steps = [b[0] - a[0] for a, b in zip(marks, marks[1:]) if b[1] == a[1] and b[2] == a[2] + 1]
    return steps, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", default="llama-3.2-1b,llama-3.1-8b")
    args = ap.parse_args()

    import torch

    from batchllm_cli.bench.model import bench_source
    from batchllm_cli.engine.llm import LLM
    from batchllm_cli.models.loader import load_model
    from batchllm_kernels import get_ops

    doc = {"script": "benchmarks/bench_decode_step.py", "gpu": torch.cuda.get_device_name(), "results": []}
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        source = bench_source(preset)
        model = load_model(source, "bfloat16", "cuda", get_ops("cuda"))
        for groups, degree, prefix, own, new in CASES:
            prompts = _prompts(groups, degree, prefix, own, source.config.vocab_size)
            blocks = groups * (prefix // 16 + 2) + groups * degree * ((own + new) // 16 + 3)
            row = {"preset": preset, "batch": groups * degree, "groups": groups, "degree": degree,
                   "prefix": prefix, "own": own, "new_tokens": new}
            for graphs in (False, True):
                llm = LLM.from_loaded(source, model, device="cuda", cuda_graphs=graphs, num_kv_blocks=blocks)
                _decode_step_times(llm, prompts[:degree], 4)  # warm-up: kernels compiled
                steps, total = _decode_step_times(llm, prompts, new)
                key = "graphs" if graphs else "eager"
                row[f"{key}_step_ms_median"] = round(1e3 * statistics.median(steps), 3)
                row[f"{key}_step_ms_min"] = round(1e3 * min(steps), 3)
                row[f"{key}_decode_steps"] = len(steps)
                row[f"{key}_run_s"] = round(total, 3)
                if graphs and llm.runner.graphs is not None:
                    row["graph_captures"] = llm.runner.graphs.captures
                    row["graph_replays"] = llm.runner.graphs.replays
                del llm
                gc.collect()
                torch.cuda.empty_cache()
            row["speedup"] = round(row["eager_step_ms_median"] / row["graphs_step_ms_median"], 2)
            doc["results"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        del model
        gc.collect()
        torch.cuda.empty_cache()
    print(f"\n{'preset':<14}{'batch':>6}{'eager ms':>10}{'graphs ms':>11}{'speedup':>9}")
    for r in doc["results"]:
        print(f"{r['preset']:<14}{r['batch']:>6}{r['eager_step_ms_median']:>10.2f}{r['graphs_step_ms_median']:>11.2f}{r['speedup']:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
