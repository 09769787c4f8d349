"""A KV pool of a stated size: `--kv-tokens N`, or `--kv-pool-like MODEL@GPU` (the tokens of KV
a vLLM-style engine holds for MODEL on GPU, from configs/gpus.toml), so that the paper's memory
regime (Llama-3.1-8B on an 80 GB A100: ~430k tokens) can be reproduced on a bigger GPU."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from batchllm_cli.bench.roofline import DTYPE_BYTES, ModelCost
from batchllm_cli.errors import ConfigError

GIB = 1 << 30
SERVING_DTYPE = "bfloat16"  # the paper's engines serve in bf16


@dataclass(frozen=True)
class KvPool:
    """A pool size in tokens and blocks, and where the number comes from (for the report)."""

    tokens: int
    blocks: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "blocks": self.blocks, "source": self.source}


def kv_pool_of_tokens(tokens: int, block_size: int, source: str | None = None) -> KvPool:
    if tokens < block_size:
        raise ConfigError(f"--kv-tokens must be at least one block ({block_size} tokens), got {tokens}")
    blocks = math.ceil(tokens / block_size)
    return KvPool(blocks * block_size, blocks, source or f"--kv-tokens {tokens}")


def scaled_pool(pool: KvPool, factor: float, block_size: int) -> KvPool:
    """`pool` times `factor` (whole blocks, at least one): the pool of a workload scaled by
    `factor`, holding the same share of it."""
    if factor == 1:
        return pool
    blocks = max(1, round(pool.blocks * factor))
    head, sep, tail = pool.source.partition(":")
    return KvPool(blocks * block_size, blocks, f"{head} x {factor:g}{sep}{tail}; scaled with the workload")


def gpu_table() -> dict[str, Any]:
    """configs/gpus.toml."""
    return tomllib.loads(resources.files("batchllm_cli.configs").joinpath("gpus.toml").read_text())


def kv_pool_like(spec: str, block_size: int) -> KvPool:
    """The pool of `MODEL@GPU` (a model preset, a GPU of configs/gpus.toml)."""
    from batchllm_cli.models.config import ModelConfig
    from batchllm_cli.models.presets import get_preset

    model_name, at, gpu = spec.partition("@")
    table = gpu_table()
    gpus = sorted(k for k, v in table.items() if isinstance(v, dict))
    if not at or not model_name or not gpu:
        raise ConfigError(f"--kv-pool-like takes MODEL@GPU (e.g. llama-3.1-8b@a100-80gb), got {spec!r}")
    if gpu not in gpus:
        raise ConfigError(f"--kv-pool-like: unknown GPU {gpu!r}: choose from {', '.join(gpus)} (configs/gpus.toml)")
    preset = get_preset(model_name)
    if preset is None:
        raise ConfigError(f"--kv-pool-like: unknown model preset {model_name!r} (see `batchllm models`)")
    mc = ModelConfig.from_hf(preset.make_hf_config())
    tokens = kv_tokens_like(mc, table[gpu]["memory_gib"], table["utilization"], table["reserve_gib"])
    if tokens < block_size:
        raise ConfigError(f"--kv-pool-like {spec}: the weights leave no KV memory on that GPU")
    source = (
        f"{spec}: ({table[gpu]['memory_gib']} GiB x {table['utilization']} - weights - "
        f"{table['reserve_gib']} GiB reserve) / KV bytes per token, bf16 (configs/gpus.toml)"
    )
    return kv_pool_of_tokens(tokens, block_size, source)


def kv_tokens_like(mc: Any, memory_gib: float, utilization: float, reserve_gib: float) -> int:
    """Tokens of KV that fit beside the bf16 weights of model shape `mc` in that much memory."""
    cost = ModelCost.of(mc, SERVING_DTYPE)
    embed = 0 if mc.tie_word_embeddings else mc.vocab_size * mc.hidden_size
    weights = (cost.linear_params + cost.lm_head_params + embed) * DTYPE_BYTES[SERVING_DTYPE]
    free = memory_gib * utilization * GIB - weights - reserve_gib * GIB
    return max(0, int(free // cost.kv_bytes_per_token))
