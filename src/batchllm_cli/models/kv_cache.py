"""Allocation of the paged KV cache the model reads and writes, one (K, V) pair per layer."""

from __future__ import annotations

import torch

from batchllm_cli.models.config import ModelConfig, to_dtype


def allocate_kv_cache(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: str | torch.dtype,
    device: torch.device | str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed caches, each [num_blocks, block_size, num_kv_heads, head_dim]; bytes = num_blocks *
    block_size * config.kv_bytes_per_token(dtype)."""
    shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
    dt = to_dtype(dtype)
    return [
        (torch.zeros(shape, dtype=dt, device=device), torch.zeros(shape, dtype=dt, device=device))
        for _ in range(config.num_layers)
    ]


def num_blocks_for_bytes(
    config: ModelConfig, num_bytes: int, block_size: int, dtype: str | torch.dtype
) -> int:
    """How many blocks of `block_size` tokens fit in `num_bytes` of KV cache."""
    return max(0, num_bytes // (block_size * config.kv_bytes_per_token(dtype)))
