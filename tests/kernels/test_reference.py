"""The reference ops against direct formulas, transformers' own layers and a naive attention."""

from __future__ import annotations

import math

import pytest
import torch

from batchllm_kernels import AttentionMetadata, get_ops, reference as ref


def _paged_case(seed, block_size, num_kv_heads, group, head_dim, shared_lens, items):
    """Random paged caches and metadata. items: (q_len, own_ctx, shared_id) in kernel order."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(math.ceil(n / block_size) for n in shared_lens)
    need += sum(math.ceil((q + c) / block_size) for q, c, _ in items)
    num_blocks = need + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()

    def take(n_tokens):
        return [perm.pop() for _ in range(math.ceil(n_tokens / block_size))]

    shared_tables = [take(n) for n in shared_lens]
    own_tables = [take(q + c) for q, c, _ in items]
    meta = AttentionMetadata.build(
        block_size=block_size,
        q_lens=[q for q, _, _ in items],
        own_ctx_lens=[c for _, c, _ in items],
        own_block_tables=own_tables,
        shared_ids=[s for _, _, s in items],
        shared_lens=list(shared_lens),
        shared_block_tables=shared_tables,
    )
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen)
    v_cache = torch.randn(shape, generator=gen)
    num_tokens = sum(q for q, _, _ in items)
    q = torch.randn(num_tokens, num_kv_heads * group, head_dim, generator=gen)
    return q, k_cache, v_cache, meta, shared_tables, own_tables


def _naive_attention(q, k_cache, v_cache, shared_lens, shared_tables, own_tables, items, scale):
    """Per query: gather the full visible K/V position by position, then softmax."""
    bs = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros_like(q)
    t = 0
    for (q_len, ctx, s), own in zip(items, own_tables):
        pre = [] if s < 0 else [(shared_tables[s][p // bs], p % bs) for p in range(shared_lens[s])]
        for j in range(q_len):
            slots = pre + [(own[p // bs], p % bs) for p in range(ctx + j + 1)]
            k = torch.stack([k_cache[b, o] for b, o in slots])  # [kv, kv_heads, dim]
            v = torch.stack([v_cache[b, o] for b, o in slots])
            for h in range(q.shape[1]):
                w = torch.softmax(k[:, h // group] @ q[t, h] * scale, dim=0)
                out[t, h] = w @ v[:, h // group]
            t += 1
    return out


CASES = {
    # name: (shared_lens, items as (q_len, own_ctx, shared_id))
    "prefill_only": ([], [(5, 0, -1), (9, 0, -1)]),
    "prefill_ctx": ([], [(4, 7, -1), (1 + 2, 13, -1)]),
    "decodes_no_shared": ([], [(1, 0, -1), (1, 6, -1), (1, 17, -1)]),
    "shared_decodes": ([10, 21], [(1, 0, 0), (1, 3, 0), (1, 9, 1), (1, 1, 1), (1, 4, -1)]),
    "mixed": ([7, 16], [(1, 2, 0), (1, 5, 0), (1, 0, 1), (6, 0, 1), (3, 4, 0), (16, 0, -1)]),
    "empty_shared": ([0], [(1, 3, 0), (2, 0, 0)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_attention_matches_naive(case, block_size, group):
    shared_lens, items = CASES[case]
    q, kc, vc, meta, st, ot = _paged_case(7, block_size, 2, group, 8, shared_lens, items)
    scale = 8**-0.5
    got = ref.attention(q, kc, vc, meta, scale)
    want = _naive_attention(q, kc, vc, shared_lens, st, ot, items, scale)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_many_decode_lengths_bucketed():
    """Decodes of very different lengths land in several padded batches; all still exact."""
    items = [(1, n, -1) for n in (0, 1, 2, 40, 3, 90, 5, 64)]
    q, kc, vc, meta, st, ot = _paged_case(3, 4, 1, 2, 4, [], items)
    got = ref.attention(q, kc, vc, meta, 0.5)
    want = _naive_attention(q, kc, vc, [], st, ot, items, 0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_keeps_dtype_and_reuses_layout_per_step():
    shared_lens, items = CASES["mixed"]
    q, kc, vc, meta, *_ = _paged_case(1, 4, 2, 2, 8, shared_lens, items)
    a = ref.attention(q.bfloat16(), kc.bfloat16(), vc.bfloat16(), meta, 0.3)
    b = ref.attention(q, kc, vc, meta, 0.3)  # second layer of the same step: cached layout
    assert a.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b, atol=3e-2, rtol=3e-2)


def test_metadata_refilled_in_place_is_not_served_a_stale_layout():
    shared_lens, items = CASES["decodes_no_shared"]
    q, kc, vc, meta, st, ot = _paged_case(5, 4, 2, 2, 8, shared_lens, items)
    ref.attention(q, kc, vc, meta, 0.5)
    meta.own_ctx_lens[1] -= 2  # the same object, now describing a shorter context
    items = [(1, 0, -1), (1, 4, -1), (1, 17, -1)]
    want = _naive_attention(q, kc, vc, [], st, ot, items, 0.5)
    torch.testing.assert_close(ref.attention(q, kc, vc, meta, 0.5), want, atol=1e-5, rtol=1e-5)


def test_merge_equals_attention_over_concatenation():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 5, 6, 8, generator=gen)
    k = torch.randn(1, 2, 19, 8, generator=gen)  # head-major [batch, kv_heads, kv_len, dim]
    v = torch.randn(1, 2, 19, 8, generator=gen)
    o_full, lse_full = ref.attention_with_lse(q, k, v, 0.4)
    o_a, lse_a = ref.attention_with_lse(q, k[:, :, :7], v[:, :, :7], 0.4)
    o_b, lse_b = ref.attention_with_lse(q, k[:, :, 7:], v[:, :, 7:], 0.4)
    o, lse = ref.merge_attn_states(o_a[0], lse_a[0], o_b[0], lse_b[0])
    torch.testing.assert_close(o, o_full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_full[0], atol=1e-5, rtol=1e-5)


def test_merge_with_empty_part_is_identity():
    o = torch.randn(3, 2, 4)
    lse = torch.randn(3, 2)
    empty = torch.full((3, 2), float("-inf"))
    got, got_lse = ref.merge_attn_states(torch.zeros_like(o), empty, o, lse)
    torch.testing.assert_close(got, o)
    torch.testing.assert_close(got_lse, lse)
    both, both_lse = ref.merge_attn_states(o, empty, o, empty)
    assert torch.all(both == 0) and torch.all(torch.isneginf(both_lse))


def test_attention_with_lse_masked_row_is_empty():
    q = torch.randn(1, 2, 2, 4)
    k = torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[[True, False, True], [False, False, False]]])
    o, lse = ref.attention_with_lse(q, k, k, 1.0, mask)
    assert torch.isneginf(lse[0, 1]).all() and torch.all(o[0, 1] == 0)
    w = torch.softmax(k[0, 0, [0, 2]] @ q[0, 0, 1], dim=0)
    torch.testing.assert_close(o[0, 0, 1], w @ k[0, 0, [0, 2]])
    torch.testing.assert_close(lse[0, 0, 1], torch.logsumexp(k[0, 0, [0, 2]] @ q[0, 0, 1], dim=0))


def test_store_kv_writes_slots():
    kc = torch.zeros(3, 4, 2, 5)
    vc = torch.zeros(3, 4, 2, 5)
    k, v = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    ref.store_kv(k, v, kc, vc, torch.tensor([9, 0, 6]))
    torch.testing.assert_close(kc[2, 1], k[0])
    torch.testing.assert_close(vc[0, 0], v[1])
    torch.testing.assert_close(kc[1, 2], k[2])
    assert kc.abs().sum() == pytest.approx(k.abs().sum().item(), rel=1e-5)


def test_rms_norm_matches_transformers_and_fuses_residual():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, res = torch.randn(4, 16), torch.randn(4, 16)
    norm = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    out, res_out = ref.rms_norm(x, norm.weight.data, 1e-5)
    torch.testing.assert_close(out, norm(x).detach())
    assert res_out is x
    out, res_out = ref.rms_norm(x, norm.weight.data, 1e-5, residual=res)
    torch.testing.assert_close(res_out, x + res)
    torch.testing.assert_close(out, norm(x + res).detach())


def test_rotary_matches_transformers_rotate_half():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim, max_pos = 8, 32
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    pos = torch.tensor([0, 5, 31, 2])
    q, k = torch.randn(4, 6, head_dim), torch.randn(4, 2, head_dim)
    got_q, got_k = ref.rotary_embedding(q, k, pos, cache)
    emb = torch.cat((freqs, freqs), dim=-1)[pos]  # [T, D]
    # HF layout: [batch, heads, seq, dim] with cos/sin [batch, seq, dim]
    want_q, want_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], emb.cos()[None], emb.sin()[None]
    )
    torch.testing.assert_close(got_q, want_q[0].transpose(0, 1))
    torch.testing.assert_close(got_k, want_k[0].transpose(0, 1))


def test_silu_and_mul_formula():
    x = torch.randn(3, 10)
    want = x[:, :5] * torch.sigmoid(x[:, :5]) * x[:, 5:]
    torch.testing.assert_close(ref.silu_and_mul(x), want)
    assert ref.silu_and_mul(x.bfloat16()).dtype == torch.bfloat16


def test_get_ops_cpu_is_reference():
    assert get_ops("cpu") is ref
    assert get_ops(torch.device("cpu")).attention is ref.attention
