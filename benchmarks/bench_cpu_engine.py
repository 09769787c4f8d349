"""CPU throughput of our engine on the embedded SmolLM2 next to HF transformers on the same prompts.

Workload: G documents (different texts of about 170 tokens), each asked Q questions, shuffled;
every request produces exactly N tokens (EOS ignored on both sides), greedy. Ours runs with
prefix sharing on and off; HF runs `generate_batch` (continuous batching, paged cache) when this
transformers has it, else `generate` with left padding. Each side gets a small warm-up run first.

    python benchmarks/bench_cpu_engine.py [--groups 8] [--questions 8] [--max-tokens 32]
        [--out results/bench_cpu_engine.json] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

TOPICS = ["river town", "mountain railway", "coastal lighthouse", "desert observatory", "forest school",
          "island harbour", "city library", "valley vineyard", "northern mine", "lake ferry"]
FACTS = [
    "It was built in {y} by a small group of families who had moved there from the south.",
    "For many years its main trade was {t}, which gave work to about {n} people.",
    "A great storm in {y2} damaged most of the old buildings, and they were rebuilt in stone.",
    "Visitors come in the summer for the festival, which ends with music on the main square.",
    "The oldest part still standing is the {p}, which the council repaired in {y3}.",
    "Children from the nearby villages attend its school, which has {k} teachers.",
    "A local museum keeps maps, letters and tools from the first hundred years.",
]
QUESTIONS = ["When was it built?", "What was its main trade?", "What happened in the great storm?",
             "Why do visitors come?", "What is the oldest part?", "How many teachers are there?",
             "What does the museum keep?", "Who built it?", "How many people worked there?",
             "When was the oldest part repaired?", "What is it known for?", "Where is it?"]
TRADES = ["wool", "timber", "fishing", "salt", "copper", "glass", "wine", "paper", "cheese", "rope"]
PARTS = ["bridge", "chapel", "tower", "mill", "gate", "market hall", "quay", "well", "granary", "inn"]


def documents(groups: int) -> list[str]:
    rng = random.Random(0)
    docs = []
    for g in range(groups):
        vals = dict(y=1700 + rng.randrange(200), y2=1850 + rng.randrange(100), y3=1950 + rng.randrange(70),
                    t=TRADES[g % len(TRADES)], n=50 + rng.randrange(900), p=PARTS[g % len(PARTS)],
                    k=3 + rng.randrange(20))
        facts = [f.format(**vals) for f in FACTS]
        rng.shuffle(facts)
        docs.append(f"This is a short history of the {TOPICS[g % len(TOPICS)]} number {g + 1}. " + " ".join(facts))
    return docs


def workload(tok, groups: int, questions: int) -> list[list[int]]:
    """Chat prompts: a system message with the document, a user question; shuffled."""
    prompts = []
    for doc in documents(groups):
        system = {"role": "system", "content": "Answer from this text only.\n\n" + doc}
        for q in QUESTIONS[:questions]:
            prompts.append(tok.encode_chat([system, {"role": "user", "content": q}]))
    random.Random(1).shuffle(prompts)
    return prompts


def run_ours(llm, prompts, max_tokens: int, sharing: bool) -> dict:
    from dataclasses import replace

    from batchllm_cli.planner import build_plan
    from batchllm_cli.types import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    requests = llm.make_requests(prompts, params)
    start = time.perf_counter()
    plan = build_plan(requests, replace(llm.plan_settings(), prefix_sharing=sharing))
    progress = []
    outs = list(llm.stream(requests, plan, on_progress=progress.append))
    secs = time.perf_counter() - start
    out_tokens = sum(len(c.token_ids) for c in outs)
    return {
        "seconds": secs, "prompts_per_s": len(prompts) / secs, "output_tokens_per_s": out_tokens / secs,
        "output_tokens": out_tokens, "prefill_tokens_computed": progress[-1].prefill_tokens,
        "steps": progress[-1].steps, "shared_groups": sum(1 for g in plan.groups if g.prefix_len > 0),
    }


def run_hf(prompts, max_tokens: int, token_budget: int) -> dict:
    from make_hf_reference import GGUF, load_hf_model
    from transformers import GenerationConfig

    from batchllm_cli.models.loader import embedded_gguf_path

    model = load_hf_model(embedded_gguf_path().parent / GGUF)
    # no eos_token_id: every request makes max_tokens tokens, as ignore_eos does on our side
    gen = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=2)
    if hasattr(model, "generate_batch"):
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        method = "generate_batch (continuous batching, paged cache, prefix block sharing allowed)"
        cb = ContinuousBatchingConfig(max_batch_tokens=token_budget, num_blocks=64, page_size=256)

        def call(ps):
            return [len(o.generated_tokens) for o in model.generate_batch(ps, gen, cb).values()]
    else:  # pragma: no cover - older transformers
        method = "generate (static batch, left padding)"

        def call(ps):
            width = max(len(p) for p in ps)
            ids = torch.tensor([[2] * (width - len(p)) + p for p in ps])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
            with torch.inference_mode():
                model.generate(ids, attention_mask=mask, generation_config=gen)
            return [max_tokens] * len(ps)

    call(prompts[:2])  # warm-up
    start = time.perf_counter()
    lens = call(prompts)
    secs = time.perf_counter() - start
    return {"method": method, "seconds": secs, "prompts_per_s": len(prompts) / secs,
            "output_tokens_per_s": sum(lens) / secs, "output_tokens": sum(lens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--token-budget", type=int, default=256)
    ap.add_argument("--out", default="results/bench_cpu_engine.json")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    from batchllm_cli.engine.llm import LLM

    t0 = time.perf_counter()
    llm = LLM(None, device="cpu", token_budget=args.token_budget)
    load_s = time.perf_counter() - t0
    prompts = workload(llm.tokenizer, args.groups, args.questions)
    run_ours(llm, prompts[:2], 4, True)  # warm-up
    result = {
        "workload": {"prompts": len(prompts), "groups": args.groups, "max_tokens": args.max_tokens,
                     "prompt_tokens": sum(map(len, prompts)),
                     "mean_prompt_len": sum(map(len, prompts)) / len(prompts)},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "ours_load_seconds": load_s,
        "ours_sharing": run_ours(llm, prompts, args.max_tokens, True),
        "ours_no_sharing": run_ours(llm, prompts, args.max_tokens, False),
    }
    if not args.skip_hf:
        import transformers

        result["hf"] = run_hf(prompts, args.max_tokens, args.token_budget)
        result["hf"]["transformers"] = transformers.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    w = result["workload"]
    print(f"{w['prompts']} prompts ({w['groups']} shared documents, mean {w['mean_prompt_len']:.0f} prompt "
          f"tokens), {w['max_tokens']} output tokens each, CPU x{result['machine']['torch_threads']} threads")
    for name in ("ours_sharing", "ours_no_sharing", "hf"):
        if name in result:
            r = result[name]
            print(f"  {name:16s} {r['seconds']:7.1f} s  {r['prompts_per_s']:6.2f} prompts/s  "
                  f"{r['output_tokens_per_s']:7.1f} output tok/s")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
