"""The ops contract for CUDA devices: the same functions as `reference.py`, run as Triton kernels.

`batchllm_kernels.get_ops("cuda")` returns this module. Every launcher is free of host syncs,
so a decode-only step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from batchllm_kernels.activation import silu_and_mul
from batchllm_kernels.kv_store import store_kv
from batchllm_kernels.merge import merge_attn_states
from batchllm_kernels.metadata import AttentionMetadata
from batchllm_kernels.norm import rms_norm
from batchllm_kernels.prefill import prefill_attention
from batchllm_kernels.prefix_decode import prefix_decode_attention
from batchllm_kernels.reference import attention_with_lse
from batchllm_kernels.rotary import rotary_embedding

__all__ = [
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
    "attention",
    "attention_with_lse",
    "merge_attn_states",
]


def _nonempty(t: torch.Tensor) -> torch.Tensor:
    """A stand-in for an empty index tensor: kernels mask every read of it, but need a real pointer."""
    return t if t.numel() else torch.zeros(1, dtype=t.dtype, device=t.device)


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Paged attention of one step: the prefix-shared decode kernel, then the varlen prefill kernel."""
    # q: [num_tokens, num_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.shape[0] == 0:
        return out
    if meta.shared_lens.numel() == 0:
        meta = replace(meta, shared_lens=_nonempty(meta.shared_lens),
                       shared_block_tables=_nonempty(meta.shared_block_tables).view(1, -1))
    prefix_decode_attention(q, k_cache, v_cache, meta, scale, out, block_m=meta.decode_block_m,
                            num_splits=meta.decode_splits)
    prefill_attention(q, k_cache, v_cache, meta, scale, out)
    return out
