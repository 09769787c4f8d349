"""Differential tests of the Triton layer kernels (norm, rotary, SiLU-and-mul, KV store, merge)
against batchllm_kernels.reference. On CPU they run in Triton's interpreter (tests/kernels/conftest.py)."""

from __future__ import annotations

import math

import pytest
import torch

from batchllm_kernels import reference
from batchllm_kernels.activation import silu_and_mul
from batchllm_kernels.kv_store import store_kv
from batchllm_kernels.merge import merge_attn_states
from batchllm_kernels.norm import rms_norm
from batchllm_kernels.rotary import rotary_embedding
from triton_cases import DEVICE, ON_GPU, tolerance

DTYPES = [torch.bfloat16, torch.float16]
HIDDEN = [64, 200, 4096] if ON_GPU else [64, 200]


def _randn(*shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, hidden, with_residual):
    x = _randn(5, hidden, dtype=dtype)
    w = _randn(hidden, dtype=dtype, seed=1)
    res = _randn(5, hidden, dtype=dtype, seed=2) if with_residual else None
    out, res_out = rms_norm(x, w, 1e-6, res)
    ref_out, ref_res = reference.rms_norm(x, w, 1e-6, res)
    torch.testing.assert_close(out, ref_out, **tolerance(dtype))
    # The sum is rounded once; Triton's interpreter rounds float32 -> bfloat16 its own way.
    exact = ON_GPU or dtype != torch.bfloat16
    torch.testing.assert_close(res_out, ref_res, atol=0, rtol=0 if exact else 2**-7)


def _cos_sin_cache(max_pos: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,num_heads,num_kv_heads", [(64, 4, 1), (128, 6, 2)])
def test_rotary_embedding_on_strided_views(dtype, head_dim, num_heads, num_kv_heads):
    # q and k as views into one fused qkv projection output, as the model produces them.
    num_tokens = 7
    qkv = _randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim)
    positions = torch.tensor([0, 1, 5, 17, 100, 2047, 3], dtype=torch.int64, device=DEVICE)
    cache = _cos_sin_cache(2048, head_dim)
    q_out, k_out = rotary_embedding(q, k, positions, cache)
    q_ref, k_ref = reference.rotary_embedding(q, k, positions, cache)
    torch.testing.assert_close(q_out, q_ref, **tolerance(dtype))
    torch.testing.assert_close(k_out, k_ref, **tolerance(dtype))
    assert not torch.equal(q_out[1:], q[1:]), "position > 0 must rotate"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [48, 1100])
def test_silu_and_mul(dtype, inter):
    x = _randn(3, 2 * inter, dtype=dtype)
    torch.testing.assert_close(silu_and_mul(x), reference.silu_and_mul(x), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_writes_slots_and_skips_padding(dtype):
    num_blocks, block_size, kv_heads, head_dim = 6, 4, 2, 64
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k = _randn(5, kv_heads, head_dim, dtype=dtype)
    v = _randn(5, kv_heads, head_dim, dtype=dtype, seed=1)
    slots = torch.tensor([3, 22, 9, -1, 0], dtype=torch.int64, device=DEVICE)
    store_kv(k, v, k_cache, v_cache, slots)
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    keep = slots >= 0
    reference.store_kv(k[keep], v[keep], k_ref, v_ref, slots[keep])
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_attn_states(dtype):
    num_tokens, num_heads, head_dim = 4, 3, 64
    o_a = _randn(num_tokens, num_heads, head_dim, dtype=dtype)
    o_b = _randn(num_tokens, num_heads, head_dim, dtype=dtype, seed=1)
    lse_a = _randn(num_tokens, num_heads, dtype=torch.float32, seed=2) * 3
    lse_b = _randn(num_tokens, num_heads, dtype=torch.float32, seed=3) * 3
    lse_a[0, 0] = -math.inf  # one empty part
    lse_a[1, 1] = lse_b[1, 1] = -math.inf  # both empty: o = 0, lse = -inf
    o, lse = merge_attn_states(o_a, lse_a, o_b, lse_b)
    o_ref, lse_ref = reference.merge_attn_states(o_a, lse_a, o_b, lse_b)
    torch.testing.assert_close(o, o_ref, **tolerance(dtype))
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(o[1, 1], torch.zeros_like(o[1, 1]))
