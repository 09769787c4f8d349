"""The padded decode layout a CUDA graph replays gives the same attention as the real one.

engine/cuda_graphs.py pads a decode step to a bucket of B rows (padding rows are decodes of
their own, slot -1) and fixes the decode kernel's tile height and splits. Here the Triton
decode kernel runs on the padded layout (Triton's interpreter without a GPU) and its first n
rows must equal the reference attention of the unpadded step.
"""

from __future__ import annotations

import pytest
import torch

from batchllm_cli.engine.cuda_graphs import bucket_for, graph_key, pad_decode_layout
from batchllm_kernels import reference, triton_ops
from batchllm_kernels.metadata import AttentionMetadata, HostLayout
from triton_cases import DEVICE, decode_items, make_step, tolerance

BLOCK = 16


def _tables(meta: AttentionMetadata, lens: list[int], table: torch.Tensor) -> list[list[int]]:
    return [table[i, : -(-n // BLOCK)].tolist() for i, n in enumerate(lens)]


def _padded_meta(step, size: int, gqa: int, num_kv_heads: int) -> tuple[AttentionMetadata, int]:
    meta = step.meta
    n = meta.num_items
    ctx = meta.own_ctx_lens.tolist()
    shared_lens = meta.shared_lens.tolist()
    own_tables = _tables(meta, [c + 1 for c in ctx], meta.own_block_tables)
    shared_tables = _tables(meta, shared_lens, meta.shared_block_tables)
    layout = pad_decode_layout(
        BLOCK, token_ids=[0] * n, positions=list(range(n)), own_ctx_lens=ctx,
        own_block_tables=own_tables, shared_ids=meta.shared_ids.tolist(), shared_lens=shared_lens,
        shared_block_tables=shared_tables, size=size,
    )
    assert layout.host.slot_mapping[n:].tolist() == [-1] * (size - n)
    assert layout.host.slot_mapping[:n].tolist() == meta.slot_mapping.tolist()
    real = HostLayout.build(BLOCK, [1] * n, ctx, own_tables, meta.shared_ids.tolist(), shared_lens, shared_tables)
    bucket, block_m, splits = graph_key(real, gqa, num_kv_heads, torch.device(DEVICE))
    assert bucket == bucket_for(n)

    def t(x):  # noqa: ANN001
        return torch.from_numpy(x).to(DEVICE)

    padded = AttentionMetadata(
        block_size=BLOCK, num_decodes=size, max_q_len=1, max_kv_len=real.max_kv_len,
        cu_seqlens_q=torch.arange(size + 1, dtype=torch.int32, device=DEVICE),
        own_ctx_lens=t(layout.host.own_ctx_lens), own_block_tables=t(layout.host.own_block_tables),
        shared_ids=t(layout.host.shared_ids), shared_lens=t(layout.host.shared_lens),
        shared_block_tables=t(layout.host.shared_block_tables), slot_mapping=t(layout.host.slot_mapping),
        decode_group_ptr=t(layout.host.decode_group_ptr), decode_group_shared=t(layout.host.decode_group_shared),
        decode_block_m=block_m, decode_splits=splits,
    )
    return padded, real.num_decode_groups


@pytest.mark.parametrize(
    "groups,gqa",
    [
        ([(40, [3, 17, 0]), (0, [5]), (23, [1, 30])], 4),  # two shared groups and a solo decode
        ([(100, [2, 9, 33, 4, 16])], 2),  # one group, splits likely
        ([(0, [7]), (0, [12])], 1),  # no sharing at all, MHA
    ],
)
def test_padded_decode_layout_matches_the_real_step(groups, gqa):
    items, shared_lens = decode_items(groups)
    num_kv_heads, head_dim = 2, 16
    step = make_step(items, shared_lens, num_kv_heads=num_kv_heads, gqa=gqa, head_dim=head_dim,
                     block_size=BLOCK, dtype=torch.bfloat16)
    n = len(items)
    size = bucket_for(n + 1)  # at least one padding row
    padded, num_groups = _padded_meta(step, size, gqa, num_kv_heads)
    assert num_groups == sum(1 for s, own in groups for _ in ([0] if s else own))
    assert padded.decode_group_ptr.tolist()[num_groups : num_groups + size - n] == list(range(n, size))
    q = torch.randn((size, num_kv_heads * gqa, head_dim), device=DEVICE).to(torch.bfloat16)
    q[:n] = step.q
    scale = head_dim**-0.5
    want = reference.attention(step.q, step.k_cache, step.v_cache, step.meta, scale)
    got = triton_ops.attention(q, step.k_cache, step.v_cache, padded, scale)
    torch.testing.assert_close(got[:n], want, **tolerance(torch.bfloat16))


def test_buckets():
    assert bucket_for(1) == 1 and bucket_for(3) == 4 and bucket_for(200) == 256
    assert bucket_for(10_000) is None


def test_graph_buffers_hold_the_padded_layout_and_the_fed_tokens():
    # The static buffers a graph replays are filled by two packed copies plus device-side copies
    # of the block-table columns in use and of the tokens fed from the previous step; on the CPU
    # here (the same code moves the same bytes on a GPU, there without waiting).
    from types import SimpleNamespace

    import numpy as np

    from batchllm_cli.engine.cuda_graphs import DecodeGraphs, Feed, pad_layout
    from batchllm_kernels.metadata import HostLayout

    from batchllm_cli.engine.block_tables import DeviceBlockTables

    model = SimpleNamespace(config=SimpleNamespace(num_heads=4, num_kv_heads=2))
    graphs = DecodeGraphs(model, [], BLOCK, max_model_len=256, device=torch.device("cpu"))
    own = [(3, 4), (5,), (6, 7, 8)]
    layout = HostLayout.build(BLOCK, [1, 1, 1], [17, 2, 40], own, [0, 0, -1], [32], [(1, 2)], tables=False)
    assert (layout.own_width, layout.shared_width) == (3, 2) and layout.own_block_tables.shape == (3, 0)
    padded = pad_layout(layout, np.array([11, 0, 13]), np.array([49, 34, 40]), size=4)
    tables = DeviceBlockTables(graphs.width, torch.device("cpu"))
    tables.rows(["other"], [(9, 9, 9, 9)])  # the device table holds other sequences too
    rows = (tables.rows(["a", "b", "c"], own), tables.rows(["prefix"], [(1, 2)]))
    buf = graphs._static(4)
    buf["own_block_tables"].fill_(99)  # older columns may stay: only those in use are copied
    # row 1's token was drawn by the step before: the second of its sampled tokens
    feed = Feed(np.array([1]), np.array([1]), torch.tensor([5, 12]))
    graphs._fill(buf, padded, (layout.own_width, layout.shared_width), tables, rows, feed)
    assert buf["input_ids"].tolist() == [11, 12, 13, 0]
    assert buf["positions"].tolist() == [49, 34, 40, 0]
    assert buf["slot_mapping"].tolist() == [4 * BLOCK + 1, 5 * BLOCK + 2, 8 * BLOCK + 8, -1]
    assert buf["own_ctx_lens"].tolist() == [17, 2, 40, 0]
    assert buf["own_block_tables"][:3, :3].tolist() == [[3, 4, 0], [5, 0, 0], [6, 7, 8]]
    assert buf["own_block_tables"][3, 0] == 99  # the padding row's stale columns are never read
    assert buf["shared_ids"].tolist() == [0, 0, -1, -1] and buf["shared_lens"][:1].tolist() == [32]
    assert buf["shared_block_tables"][0, :2].tolist() == [1, 2]
    # groups: the two decodes on segment 0, the solo decode, the padding row, then empty groups
    assert buf["decode_group_ptr"].tolist() == [0, 2, 3, 4, 4]
    assert buf["decode_group_shared"].tolist() == [0, -1, -1, -1]


def test_a_graph_captured_ahead_of_its_step_holds_padding_rows_only(monkeypatch):
    # The start-up warm-up captures a key before any step needs it: the static buffers hold
    # `size` padding decodes (no KV stored, none read), and the key's launch shape is kept.
    from types import SimpleNamespace

    from batchllm_cli.engine.cuda_graphs import DecodeGraphs

    model = SimpleNamespace(config=SimpleNamespace(num_heads=4, num_kv_heads=2))
    graphs = DecodeGraphs(model, [], BLOCK, max_model_len=256, device=torch.device("cpu"))
    seen = []
    monkeypatch.setattr(graphs, "_capture", lambda key, buf, meta: seen.append((key, buf, meta)))
    graphs.capture((8, 32, 2))
    ((key, buf, meta),) = seen
    assert key == (8, 32, 2) and (meta.decode_block_m, meta.decode_splits, meta.num_decodes) == (32, 2, 8)
    assert buf["slot_mapping"].tolist() == [-1] * 8 and buf["own_ctx_lens"].tolist() == [0] * 8
    assert buf["shared_ids"].tolist() == [-1] * 8
    assert buf["decode_group_ptr"].tolist() == list(range(9))  # each padding row a group of its own
