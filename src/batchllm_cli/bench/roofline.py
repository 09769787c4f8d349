"""The roofline of a run: the time its work takes at the device's measured rates.

    ideal_s = prefill FLOPs / matmul rate + sum over steps of (weight bytes + unique KV bytes) / copy bandwidth

- prefill FLOPs: for every prompt token the engine computes, 2 x the linear layers' parameters
  (q, k, v, o, gate, up, down of every layer; not the embedding or lm_head), plus causal
  attention, 4 x layers x query heads x head_dim per (query, key) pair.
- weight bytes: every step reads the linear layers and the lm_head once.
- unique KV bytes: every KV token a step's attention reads, counted once even when several
  queries read it (a shared prefix, or a cached block in several requests' tables).
Decode FLOPs are not counted: at these batch sizes decode is bound by the bytes it reads.
The copy bandwidth is read + write bytes per second of a device copy (PEERS.md's convention).

Pure Python: the counts come from the scheduler's StepBatches (engine.simulate), which are the
steps the real run takes (greedy, EOS ignored: every request runs to max_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelCost:
    """The per-token and per-step costs of one model shape in one dtype."""

    linear_params: int  # parameters of the layers' matrices (no embedding, no lm_head)
    lm_head_params: int
    attn_flops_per_pair: int  # 4 x layers x heads x head_dim: one query against one key
    kv_bytes_per_token: int  # K and V of every layer
    dtype_bytes: int

    @classmethod
    def of(cls, mc: Any, dtype: str) -> ModelCost:
        """From a models.config.ModelConfig (or anything with its fields)."""
        h, d, layers = mc.hidden_size, mc.head_dim, mc.num_layers
        q, kv = mc.num_heads * d, mc.num_kv_heads * d
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * mc.intermediate_size
        b = DTYPE_BYTES[dtype]
        return cls(
            linear_params=layers * per_layer,
            lm_head_params=mc.vocab_size * h,
            attn_flops_per_pair=4 * layers * mc.num_heads * d,
            kv_bytes_per_token=2 * layers * kv * b,
            dtype_bytes=b,
        )

    @property
    def weight_bytes(self) -> int:
        """Bytes a step reads of weights: the linear layers and the lm_head."""
        return (self.linear_params + self.lm_head_params) * self.dtype_bytes


@dataclass(frozen=True)
class DeviceRates:
    """Measured ceilings of the device: a large matmul and a device copy."""

    matmul_flops_per_s: float
    copy_bytes_per_s: float  # read + write
    dtype: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "matmul_tflops": round(self.matmul_flops_per_s / 1e12, 3),
            "copy_gbps": round(self.copy_bytes_per_s / 1e9, 1),
            "dtype": self.dtype,
            "note": self.note,
        }


@dataclass(frozen=True)
class WorkCount:
    """What a run computes and reads, summed over its steps."""

    steps: int
    model_tokens: int  # prefill + decode tokens run through the model
    prefill_tokens: int
    prefill_flops: float
    weight_bytes: float
    kv_bytes: float  # unique KV bytes, summed over steps
    peak_kv_blocks: int

    def ideal_s(self, rates: DeviceRates) -> float:
        return self.prefill_flops / rates.matmul_flops_per_s + (self.weight_bytes + self.kv_bytes) / rates.copy_bytes_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "model_tokens": self.model_tokens,
            "prefill_tokens": self.prefill_tokens,
            "prefill_tflop": round(self.prefill_flops / 1e12, 6),
            "weight_gb": round(self.weight_bytes / 1e9, 6),
            "unique_kv_gb": round(self.kv_bytes / 1e9, 6),
            "peak_kv_blocks": self.peak_kv_blocks,
        }


class StepCounter:
    """Adds up a run's work step by step (an `on_step` observer of engine.simulate)."""

    def __init__(self, cost: ModelCost, block_size: int) -> None:
        self.cost = cost
        self.block_size = block_size
        self.steps = self.model_tokens = self.prefill_tokens = 0
        self.prefill_flops = 0.0
        self.kv_tokens = 0

    def __call__(self, batch: Any) -> None:
        """Counts one StepBatch (engine.step)."""
        self.steps += 1
        shared_lens = [s.length for s in batch.shared]
        cached_blocks: set[int] = set()
        kv_tokens = sum(shared_lens)
        bs = self.block_size
        for it in batch.items:
            q = it.q_len
            own = it.own_ctx_len + q  # own tokens attended, the new ones included
            self.model_tokens += q
            if it.kind != "decode":
                before = it.own_ctx_len + (shared_lens[it.shared_id] if it.shared_id >= 0 else 0)
                pairs = q * before + q * (q + 1) // 2  # causal: query i sees before + i + 1 keys
                self.prefill_tokens += q
                self.prefill_flops += 2 * self.cost.linear_params * q + self.cost.attn_flops_per_pair * pairs
            # whole blocks may be shared between requests (a peer's prefix cache): count each once
            full = own // bs
            cached_blocks.update(it.own_block_table[:full])
            kv_tokens += own - full * bs
        self.kv_tokens += kv_tokens + len(cached_blocks) * bs

    def result(self, peak_kv_blocks: int) -> WorkCount:
        return WorkCount(
            steps=self.steps,
            model_tokens=self.model_tokens,
            prefill_tokens=self.prefill_tokens,
            prefill_flops=float(self.prefill_flops),
            weight_bytes=float(self.steps * self.cost.weight_bytes),
            kv_bytes=float(self.kv_tokens * self.cost.kv_bytes_per_token),
            peak_kv_blocks=peak_kv_blocks,
        )
