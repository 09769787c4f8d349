"""ModelConfig from transformers configs, rope scaling, sizes; KV cache allocation."""

from __future__ import annotations

import pytest
import torch

from batchllm_cli.errors import ModelError
from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.kv_cache import allocate_kv_cache, num_blocks_for_bytes
from batchllm_cli.models.rope import build_cos_sin_cache, inverse_frequencies

SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(**{**SMALL, **kw})


@pytest.mark.parametrize("eos, want", [(2, (2,)), ([5, 7], (5, 7)), (None, ())])
def test_eos_ids_always_a_tuple(eos, want):
    assert ModelConfig.from_hf(_llama(eos_token_id=eos)).eos_token_ids == want


def test_qwen2_gets_qkv_bias_and_mistral_window_caps_positions():
    from transformers import MistralConfig, Qwen2Config

    qwen = ModelConfig.from_hf(Qwen2Config(**SMALL))
    assert qwen.attention_bias and qwen.head_dim == 8
    assert not ModelConfig.from_hf(_llama()).attention_bias
    mistral = ModelConfig.from_hf(MistralConfig(**SMALL, sliding_window=48, head_dim=8))
    assert mistral.max_position == 48


def test_unsupported_models_are_model_errors():
    from transformers import GPT2Config

    with pytest.raises(ModelError, match="not supported"):
        ModelConfig.from_hf(GPT2Config())
    with pytest.raises(ModelError, match="rope scaling type 'yarn'"):
        ModelConfig.from_hf(_llama(rope_scaling={"rope_type": "yarn", "factor": 4.0}))


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_inverse_frequencies_match_transformers(scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = _llama(rope_theta=5e5, rope_scaling=scaling, head_dim=16)
    cfg = ModelConfig.from_hf(hf)
    if scaling is None:
        want, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    else:
        want, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    assert factor == 1.0
    torch.testing.assert_close(inverse_frequencies(cfg), want.float())
    cache = build_cos_sin_cache(cfg)
    assert cache.shape == (64, 16) and cache.dtype == torch.float32
    torch.testing.assert_close(cache[5, :8], torch.cos(5 * want.float()))


def test_num_params_matches_transformers_model():
    from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    for hf in (LlamaForCausalLM(_llama(tie_word_embeddings=False)),
               Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True))):
        cfg = ModelConfig.from_hf(hf.config)
        assert cfg.num_params() == sum(p.numel() for p in hf.parameters())


def test_kv_cache_shapes_and_bytes():
    cfg = ModelConfig.from_hf(_llama(head_dim=8))
    assert cfg.kv_bytes_per_token("float32") == 2 * 3 * 2 * 8 * 4
    assert cfg.kv_bytes_per_token(torch.bfloat16) == 2 * 3 * 2 * 8 * 2
    kv = allocate_kv_cache(cfg, 5, 4, "bfloat16", "cpu")
    assert len(kv) == 3
    k, v = kv[0]
    assert k.shape == v.shape == (5, 4, 2, 8) and k.dtype == torch.bfloat16 and k is not v
    total = sum(t.numel() * t.element_size() for pair in kv for t in pair)
    assert total == 5 * 4 * cfg.kv_bytes_per_token("bfloat16")
    assert num_blocks_for_bytes(cfg, total + 10, 4, "bfloat16") == 5
    with pytest.raises(ModelError, match="dtype"):
        cfg.kv_bytes_per_token("int8")
