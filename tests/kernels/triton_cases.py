"""Random paged-attention steps for the Triton kernel tests: caches, queries and metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batchllm_kernels.metadata import AttentionMetadata

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"


@dataclass(frozen=True)
class Item:
    """One item of a step: q_len new tokens after own_ctx cached ones, optional shared segment."""

    q_len: int
    own_ctx: int
    shared: int = -1


@dataclass
class Step:
    q: torch.Tensor  # [num_tokens, num_q_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    meta: AttentionMetadata


def decode_items(groups: list[tuple[int, list[int]]]) -> tuple[list[Item], list[int]]:
    """Decode items for groups (shared_len, own context lengths); shared_len 0 = no shared segment."""
    items: list[Item] = []
    shared_lens: list[int] = []
    for shared_len, own in groups:
        sid = -1
        if shared_len > 0:
            sid = len(shared_lens)
            shared_lens.append(shared_len)
        items += [Item(1, ctx, sid) for ctx in own]
    return items, shared_lens


def make_step(
    items: list[Item],
    shared_lens: list[int],
    *,
    num_kv_heads: int,
    gqa: int,
    head_dim: int,
    block_size: int = 16,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Step:
    """Blocks come from a shuffled pool (so tables are not contiguous); K/V/q are random."""
    gen = torch.Generator().manual_seed(seed)
    need = [(n + block_size - 1) // block_size for n in shared_lens]
    need += [(it.own_ctx + it.q_len + block_size - 1) // block_size for it in items]
    num_blocks = sum(need) + 3
    pool = torch.randperm(num_blocks, generator=gen).tolist()

    def take(n_tokens: int) -> list[int]:
        n = (n_tokens + block_size - 1) // block_size
        return [pool.pop() for _ in range(n)]

    shared_tables = [take(n) for n in shared_lens]
    own_tables = [take(it.own_ctx + it.q_len) for it in items]
    meta = AttentionMetadata.build(
        block_size=block_size,
        q_lens=[it.q_len for it in items],
        own_ctx_lens=[it.own_ctx for it in items],
        own_block_tables=own_tables,
        shared_ids=[it.shared for it in items],
        shared_lens=shared_lens,
        shared_block_tables=shared_tables,
        device=DEVICE,
    )
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    v_cache = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    num_tokens = sum(it.q_len for it in items)
    q = torch.randn((num_tokens, num_kv_heads * gqa, head_dim), generator=gen).to(dtype).to(DEVICE)
    return Step(q, k_cache, v_cache, meta)


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Outputs are rounded to dtype once; the kernels also round p to dtype before P @ V."""
    return {torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}, torch.float16: {"atol": 4e-3, "rtol": 4e-3}}.get(
        dtype, {"atol": 1e-4, "rtol": 1e-4})
