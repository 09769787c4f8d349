"""Benchmark of prefix-shared decode attention (issue 7) against the attention people use today.

Llama-3-8B layout (32 query heads, 8 KV heads, head_dim 128), bf16, one decode query per
request; G groups of D requests share a prefix of P tokens, each request has S tokens of its own.
Compared, on the same GPU in one run:
  ours  - batchllm_kernels.prefix_decode (paged cache, block size 16, one launch);
  sdpa  - torch SDPA per request over a dense copy of prefix + own tokens (the copy is not timed);
  flex  - FlexAttention over one packed KV row per group (prefix, then every request's own
          tokens) with a block-sparse mask (each query sees the prefix and its own tokens).
"Unique KV" = bytes that must be read at least once: (G*P + G*D*S) * kv_heads * head_dim * 2 * 2;
bandwidth fraction = unique KV / time / measured device copy bandwidth. Times: triton's do_bench
(L2 flushed before each run), median, of a CUDA graph replay of each method (the way the engine
runs a decode step; a method that cannot be captured is timed eagerly, and the row says so).
Launch-setting sweeps: benchmarks/tune_decode.py.

    python benchmarks/bench_attention.py --out results/        # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.prefix_decode import prefix_decode_attention

HQ, HKV, DIM, BLOCK = 32, 8, 128, 16
DTYPE = torch.bfloat16
DEV = "cuda"
# (groups, degree, prefix, own): the degree sweep at P=2000 and P=16000, and the paper's weak case.
CASES = [
    (256, 1, 2000, 200), (64, 4, 2000, 200), (16, 16, 2000, 200), (4, 64, 2000, 200),
    (64, 1, 16000, 200), (16, 4, 16000, 200), (4, 16, 16000, 200), (1, 64, 16000, 200),
    (1, 256, 32768, 64),
]


class Case:
    """One decode step in the paged cache plus the peers' dense layouts of the same K/V."""

    def __init__(self, groups: int, degree: int, prefix: int, own: int, device: str,
                 layout: str = "token") -> None:
        self.groups, self.degree, self.prefix, self.own = groups, degree, prefix, own
        self.n = groups * degree
        pb, ob = math.ceil(prefix / BLOCK), math.ceil(own / BLOCK)
        num_blocks = groups * pb + self.n * ob
        gen = torch.Generator(device=device).manual_seed(0)
        # layout "token": [blocks, block_size, kv_heads, dim] in memory; "head": each kv head's
        # part of a block stored together ([blocks, kv_heads, block_size, dim]), seen through the
        # same [blocks, block_size, kv_heads, dim] view (the kernels take strides).
        shape = (num_blocks, BLOCK, HKV, DIM) if layout == "token" else (num_blocks, HKV, BLOCK, DIM)
        self.k_cache = torch.randn(shape, generator=gen, device=device, dtype=DTYPE)
        self.v_cache = torch.randn(shape, generator=gen, device=device, dtype=DTYPE)
        if layout != "token":
            self.k_cache, self.v_cache = self.k_cache.transpose(1, 2), self.v_cache.transpose(1, 2)
        self.q = torch.randn((self.n, HQ, DIM), generator=gen, device=device, dtype=DTYPE)
        shared_tables = [list(range(g * pb, (g + 1) * pb)) for g in range(groups)]
        base = groups * pb
        own_tables = [list(range(base + r * ob, base + (r + 1) * ob)) for r in range(self.n)]
        self.meta = AttentionMetadata.build(
            block_size=BLOCK, q_lens=[1] * self.n, own_ctx_lens=[own - 1] * self.n,
            own_block_tables=own_tables, shared_ids=[r // degree for r in range(self.n)],
            shared_lens=[prefix] * groups, shared_block_tables=shared_tables, device=device)
        self.scale = DIM ** -0.5
        self._prefix_slots = torch.tensor(
            [[b * BLOCK + i for b in t for i in range(BLOCK)][:prefix] for t in shared_tables], device=device)
        self._own_slots = torch.tensor(
            [[b * BLOCK + i for b in t for i in range(BLOCK)][:own] for t in own_tables], device=device)

    @property
    def unique_bytes(self) -> int:
        return (self.groups * self.prefix + self.n * self.own) * HKV * DIM * 2 * 2

    def _flat(self, cache: torch.Tensor) -> torch.Tensor:
        return cache.reshape(-1, HKV, DIM)

    def ours(self, **launch):
        out = torch.empty_like(self.q)
        return lambda: prefix_decode_attention(self.q, self.k_cache, self.v_cache, self.meta,
                                               self.scale, out, **launch), out

    def sdpa(self):
        """Per-request dense K/V [n, kv_heads, P + S, dim]: the prefix copied into every request."""
        group = torch.arange(self.n, device=self.q.device) // self.degree
        slots = torch.cat([self._prefix_slots[group], self._own_slots], dim=1)  # [n, P + S]
        k = self._flat(self.k_cache)[slots].transpose(1, 2).contiguous()
        v = self._flat(self.v_cache)[slots].transpose(1, 2).contiguous()
        q = self.q.unsqueeze(2)  # [n, HQ, 1, DIM]
        out = {}

        def run():
            out["o"] = F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=True)
        return run, out

    def flex(self):
        """One packed KV row per group: [prefix, own_0, ..., own_{D-1}]; queries padded to 16."""
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        members = self._own_slots.view(self.groups, self.degree * self.own)
        slots = torch.cat([self._prefix_slots, members], dim=1)  # [G, P + D*S]
        k = self._flat(self.k_cache)[slots].transpose(1, 2).contiguous()
        v = self._flat(self.v_cache)[slots].transpose(1, 2).contiguous()
        q_len = max(16, self.degree)
        q = torch.zeros((self.groups, HQ, q_len, DIM), dtype=DTYPE, device=self.q.device)
        q[:, :, : self.degree] = self.q.view(self.groups, self.degree, HQ, DIM).transpose(1, 2)
        prefix, own = self.prefix, self.own

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx < prefix) | ((kv_idx - prefix) // own == q_idx)

        mask = create_block_mask(mask_mod, None, None, q_len, k.shape[2], device=self.q.device)
        fn = torch.compile(flex_attention, dynamic=False)
        out = {}

        def run():
            out["o"] = fn(q, k, v, block_mask=mask, scale=self.scale, enable_gqa=True)
        return run, out


def eager_us(fn) -> float:
    """Eager timing: the host launches every kernel of each call."""
    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=10, rep=50, return_mode="median") * 1000.0


def graph_us(fn) -> float:
    """Timing of one captured CUDA graph of fn (what a decode step replays: no host launch gaps)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=10, rep=100, return_mode="median") * 1000.0


def time_us(fn) -> tuple[float, str]:
    """(µs, "graph") from a CUDA graph replay, or (µs, "eager") where fn cannot be captured."""
    try:
        return graph_us(fn), "graph"
    except Exception:  # noqa: BLE001 - e.g. a compiled peer that refuses capture
        torch.cuda.synchronize()
        return eager_us(fn), "eager"


def copy_bandwidth() -> float:
    """Device-to-device copy, counting bytes read and written (GB/s)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    us = eager_us(lambda: y.copy_(x))
    return 2 * x.numel() / us / 1e3


def run_case(spec, bw: float, log) -> dict:
    g, d, p, s = spec
    case = Case(g, d, p, s, "cuda")
    row = {"case": f"{g}x{d}, P={p}, S={s}", "unique_MB": case.unique_bytes / 1e6}
    fn, ours_out = case.ours()
    row["ours_us"], row["ours_timing"] = time_us(fn)
    row["bw_fraction"] = case.unique_bytes / (row["ours_us"] * 1e-6) / (bw * 1e9)
    ours_o = ours_out.float()
    for name in ("sdpa", "flex"):
        if name == "sdpa" and case.n * (p + s) > 2_000_000:  # dense copies over ~8 GB: skip
            row[f"{name}_us"] = None
            row[f"{name}_skipped"] = True
            continue
        try:
            fn, out = getattr(case, name)()
            row[f"{name}_us"], row[f"{name}_timing"] = time_us(fn)
            o = out["o"]
            o = o[:, :, 0] if name == "sdpa" else o[:, :, :d].transpose(1, 2).reshape(g * d, HQ, DIM)
            row[f"{name}_maxdiff"] = float((o.float() - ours_o).abs().max())
            del fn, out, o
        except Exception as exc:  # a peer failing on a shape is itself a result
            row[f"{name}_us"] = None
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        torch.cuda.empty_cache()
    log(json.dumps(row))
    del case
    torch.cuda.empty_cache()
    return row


def prefill_step(items, prefix: int):
    """One prefill step in the paged cache: items (q_len, own context, shared id) after a prefix."""
    total_kv = prefix + sum(q for q, _, _ in items)
    blocks = math.ceil(total_kv / BLOCK) + 16 * len(items)
    kc = torch.randn((blocks, BLOCK, HKV, DIM), device=DEV, dtype=DTYPE)
    vc = torch.randn_like(kc)
    pb = math.ceil(prefix / BLOCK)
    own, nxt = [], pb
    for q, _, _ in items:
        own.append(list(range(nxt, nxt + math.ceil(q / BLOCK))))
        nxt += len(own[-1])
    meta = AttentionMetadata.build(
        block_size=BLOCK, q_lens=[q for q, _, _ in items], own_ctx_lens=[c for _, c, _ in items],
        own_block_tables=own, shared_ids=[sid for _, _, sid in items],
        shared_lens=[prefix] if prefix else [], shared_block_tables=[list(range(pb))] if prefix else [],
        device=DEV)
    q = torch.randn((sum(q for q, _, _ in items), HQ, DIM), device=DEV, dtype=DTYPE)
    return q, kc, vc, meta, own


PREFILL_CASES = [([(2048, 0, -1)], 0), ([(200, 0, 0)] * 16, 2000)]


def prefill_rows(log) -> None:
    """Our varlen paged prefill against SDPA (flash, dense K/V) for a prefix and its distinct parts."""
    from batchllm_kernels.prefill import prefill_attention

    for items, prefix in PREFILL_CASES:
        q, kc, vc, meta, own = prefill_step(items, prefix)
        num_tokens = q.shape[0]
        out = torch.empty_like(q)
        ours, _ = time_us(lambda: prefill_attention(q, kc, vc, meta, DIM ** -0.5, out))
        # SDPA on dense per-item K/V (prefix copied per item, untimed), causal over the own part.
        flat_k, flat_v = kc.view(-1, HKV, DIM), vc.view(-1, HKV, DIM)
        qlen = items[0][0]
        slots = torch.cat([torch.arange(prefix, device=DEV).expand(len(items), prefix),
                           torch.stack([torch.tensor([b * BLOCK + i for b in t for i in range(BLOCK)][:qlen],
                                                     device=DEV) for t in own])], dim=1)
        k = flat_k[slots].transpose(1, 2).contiguous()
        v = flat_v[slots].transpose(1, 2).contiguous()
        qd = q.view(len(items), qlen, HQ, DIM).transpose(1, 2)
        mask = torch.ones((qlen, prefix + qlen), dtype=torch.bool, device=DEV)
        mask[:, prefix:] = torch.ones((qlen, qlen), dtype=torch.bool, device=DEV).tril()

        def sdpa():
            if prefix:
                return F.scaled_dot_product_attention(qd, k, v, attn_mask=mask, enable_gqa=True)
            return F.scaled_dot_product_attention(qd, k, v, is_causal=True, enable_gqa=True)
        ref = sdpa().transpose(1, 2).reshape(num_tokens, HQ, DIM)
        diff = float((ref.float() - out.float()).abs().max())
        log(json.dumps({"prefill": f"{len(items)} x {qlen} tokens after a {prefix}-token prefix",
                        "ours_us": round(ours, 1), "sdpa_us": round(time_us(sdpa)[0], 1), "maxdiff": diff}))


def table(rows: list[dict], bw: float, device: str) -> str:
    def fmt(r, name):
        x = r.get(f"{name}_us")
        if x is None:
            return "skipped (dense copy > 8 GB)" if r.get(f"{name}_skipped") else "fails"
        return f"{x:,.0f} µs" + (" (eager)" if r.get(f"{name}_timing") == "eager" else "")

    lines = [f"Device: {device}; copy bandwidth {bw:,.0f} GB/s (read + write)", "",
             "| G×D, P, S | unique KV | ours | % of copy BW | SDPA (prefix copied) | FlexAttention | ours vs best peer |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peers = [x for x in (r.get("sdpa_us"), r.get("flex_us")) if x]
        speedup = f"{min(peers) / r['ours_us']:.2f}×" if peers else "—"
        lines.append(f"| {r['case']} | {r['unique_MB']:,.0f} MB | {r['ours_us']:,.0f} µs | "
                     f"{100 * r['bw_fraction']:.0f}% | {fmt(r, 'sdpa')} | {fmt(r, 'flex')} | {speedup} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--cases", default="", help="only these GxD cases (comma list)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA GPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "bench_attention.jsonl"

    def log(line: str) -> None:
        print(line, flush=True)
        with log_path.open("a") as f:
            f.write(line + "\n")

    device = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    log(json.dumps({"device": device, "copy_GBps": bw, "torch": torch.__version__}))
    only = {c for c in args.cases.split(",") if c}
    rows = []
    for spec in CASES:
        key = f"{spec[0]}x{spec[1]}"
        if only and key not in only:
            continue
        t0 = time.time()
        try:
            rows.append(run_case(spec, bw, log))
        except Exception:
            log(json.dumps({"case": key, "error": traceback.format_exc()[-800:]}))
        log(json.dumps({"case": key, "wall_s": round(time.time() - t0, 1)}))
    try:
        prefill_rows(log)
    except Exception:
        log(json.dumps({"prefill": "error", "error": traceback.format_exc()[-800:]}))
    text = table(rows, bw, device)
    (args.out / "bench_attention.md").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
