"""The embedded SmolLM2 GGUF through our loader and model against transformers' GGUF loading."""

from __future__ import annotations

import math

import pytest
import torch

from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.kv_cache import allocate_kv_cache
from batchllm_cli.models.presets import get_preset
from batchllm_kernels import AttentionMetadata

BLOCK = 16


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    # bos + ids from the ordinary part of the vocabulary; lengths across block boundaries
    return [[1] + torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (20, 5, 37)]


def test_preset_shape_matches_the_file(smollm2_source):
    from_toml = ModelConfig.from_hf(get_preset("smollm2").make_hf_config())
    from_file = smollm2_source.config
    assert from_toml.rms_norm_eps == pytest.approx(from_file.rms_norm_eps, rel=1e-6)
    assert from_toml == ModelConfig(**{**from_file.__dict__, "rms_norm_eps": from_toml.rms_norm_eps})
    assert smollm2_source.tokenizer_gguf_file == smollm2_source.path.name


def test_config_matches_transformers_reading(smollm2_source, smollm2_hf_model):
    theirs = smollm2_hf_model.gguf_config
    hf = smollm2_source.hf_config
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
                "rms_norm_eps", "bos_token_id", "eos_token_id"):
        assert getattr(hf, key) == theirs[key], key
    assert smollm2_source.config.rope_theta == theirs["rope_theta"]


def test_logits_match_transformers(smollm2_model, smollm2_hf_model):
    prompts = _prompts()
    kv = allocate_kv_cache(smollm2_model.config, 8, BLOCK, torch.float32, "cpu")
    tables, nxt = [], 1
    for p in prompts:
        n = math.ceil(len(p) / BLOCK)
        tables.append(list(range(nxt, nxt + n)))
        nxt += n
    meta = AttentionMetadata.build(
        block_size=BLOCK, q_lens=[len(p) for p in prompts], own_ctx_lens=[0] * len(prompts),
        own_block_tables=tables, shared_ids=[-1] * len(prompts), shared_lens=[], shared_block_tables=[],
    )
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.tensor([i for p in prompts for i in range(len(p))])
    with torch.no_grad():
        logits = smollm2_model.compute_logits(smollm2_model(ids, positions, meta, kv))
    start = 0
    for p in prompts:
        with torch.no_grad():
            want = smollm2_hf_model(torch.tensor([p])).logits[0].float()
        got = logits[start : start + len(p)]
        torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        start += len(p)
