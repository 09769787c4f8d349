"""Long-context prefill attention on a GPU: our varlen paged kernel's launch settings against
SDPA (flash, dense K/V), at the shapes a long-prefix job's steps hold.

Cases (block size 16, bf16, causal over own tokens):
  chunk0   - the first 8,192-token chunk of a 16,000-token prefix (no context);
  chunk1   - its second chunk, 7,808 tokens after 8,192 cached ones;
  members  - 16 members' 200-token suffixes after a shared 16,000-token prefix;
  short    - one 2,048-token prompt (the PEERS.md shape).
For the Llama-3.2-1B heads (32 query, 8 kv, head_dim 64) and Llama-3.1-8B's (32, 8, 128).
TFLOP/s counts the visible (query, key) pairs only: 4 * head_dim * query heads per pair.
Times: triton's do_bench median of a CUDA graph replay, repeated --repeats times, variants
interleaved within each repeat.

    python benchmarks/bench_prefill.py --out results.jsonl [--repeats 3] [--heads 64,128]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import graph_us  # noqa: E402

from batchllm_kernels.metadata import AttentionMetadata  # noqa: E402
from batchllm_kernels.prefill import prefill_attention  # noqa: E402

BLOCK = 16
HQ, HKV = 32, 8
DEV = "cuda"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


# name: (items as (q_len, own context, shared id), shared prefix length)
CASES = {
    "chunk0": ([(8192, 0, -1)], 0),
    "chunk1": ([(7808, 8192, -1)], 0),
    "members": ([(200, 0, 0)] * 16, 16000),
    "short": ([(2048, 0, -1)], 0),
}
VARIANTS = {
    "default": {},
    "m128n64w8s3": {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3},
    "m128n64w4s3": {"block_m": 128, "block_n": 64, "num_warps": 4, "num_stages": 3},
    "m128n128w8s2": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
    "pack_m64n64w4s2": {"pack_heads": True},
    "pack_m128n64w4s2": {"pack_heads": True, "block_m": 128, "num_warps": 4},
    "pack_m128n64w8s3": {"pack_heads": True, "block_m": 128, "num_warps": 8, "num_stages": 3},
    "pack_m128n128w8s2": {"pack_heads": True, "block_m": 128, "block_n": 128, "num_warps": 8},
    "pack_m256n64w8s2": {"pack_heads": True, "block_m": 256, "num_warps": 8},
}


def step(items, prefix: int, dim: int):
    """Caches, queries and metadata of one prefill step (own blocks after the prefix's)."""
    pb = math.ceil(prefix / BLOCK)
    own, nxt = [], pb
    for q, ctx, _ in items:
        own.append(list(range(nxt, nxt + math.ceil((ctx + q) / BLOCK))))
        nxt += len(own[-1])
    kc = torch.randn((nxt + 1, BLOCK, HKV, dim), device=DEV, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    meta = AttentionMetadata.build(
        block_size=BLOCK, q_lens=[q for q, _, _ in items], own_ctx_lens=[c for _, c, _ in items],
        own_block_tables=own, shared_ids=[s for _, _, s in items],
        shared_lens=[prefix] if prefix else [], shared_block_tables=[list(range(pb))] if prefix else [],
        device=DEV)
    q = torch.randn((sum(q for q, _, _ in items), HQ, dim), device=DEV, dtype=torch.bfloat16)
    return q, kc, vc, meta, own


def visible_pairs(items, prefix: int) -> int:
    return sum(q * (prefix + ctx) + q * (q + 1) // 2 for q, ctx, _ in items)


def sdpa_fn(q, kc, vc, items, prefix: int, own):
    """SDPA on dense K/V (heads repeated, copies untimed); None where no flash call fits the case."""
    if len(items) != 1 or prefix or items[0][1]:
        return None
    n = items[0][0]
    dim = q.shape[-1]
    slots = torch.tensor([b * BLOCK + i for b in own[0] for i in range(BLOCK)][:n], device=DEV)
    k = kc.view(-1, HKV, dim)[slots].repeat_interleave(HQ // HKV, 1).transpose(0, 1).unsqueeze(0).contiguous()
    v = vc.view(-1, HKV, dim)[slots].repeat_interleave(HQ // HKV, 1).transpose(0, 1).unsqueeze(0).contiguous()
    qd = q.transpose(0, 1).unsqueeze(0).contiguous()

    def run():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(qd, k, v, is_causal=True)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heads", default="64,128", help="head dims to run")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--budget-s", type=float, default=300)
    args = ap.parse_args()
    deadline = time.time() + args.budget_s
    with args.out.open("a") as fh:
        def log(row):
            print(json.dumps(row), flush=True)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        log({"device": torch.cuda.get_device_name(), "torch": torch.__version__})
        for dim in [int(d) for d in args.heads.split(",")]:
            for name in args.cases.split(","):
                items, prefix = CASES[name]
                q, kc, vc, meta, own = step(items, prefix, dim)
                out = torch.empty_like(q)
                flop = 4 * dim * HQ * visible_pairs(items, prefix)
                fns = {k: (lambda kw=kw: prefill_attention(q, kc, vc, meta, dim ** -0.5, out, **kw))
                       for k, kw in VARIANTS.items()}
                ref, bad = None, {}
                for key, fn in list(fns.items()):  # compile, check against the default
                    try:
                        fn()
                        sync()
                        if ref is None:
                            ref = out.float().clone()
                        elif float((out.float() - ref).abs().max()) > 2e-2:
                            bad[key] = float((out.float() - ref).abs().max())
                    except Exception as exc:  # noqa: BLE001 - a variant that fails is a result
                        bad[key] = f"{type(exc).__name__}: {str(exc)[:120]}"
                        del fns[key]
                sd = sdpa_fn(q, kc, vc, items, prefix, own)
                if sd is not None:
                    fns["sdpa_flash"] = sd
                times: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(args.repeats):
                    for key, fn in fns.items():
                        if time.time() < deadline:
                            times[key].append(graph_us(fn))
                row = {"case": name, "head_dim": dim, "gflop": round(flop / 1e9, 2), "errors": bad}
                for key, ts in times.items():
                    if ts:
                        med = statistics.median(ts)
                        row[key] = {"us": round(med, 1), "min": round(min(ts), 1), "max": round(max(ts), 1),
                                    "tflops": round(flop / med / 1e6, 1)}
                log(row)
                del q, kc, vc, meta, out, fns
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
