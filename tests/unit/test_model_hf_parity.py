"""Our Llama/Qwen2 decoder, loaded by our safetensors loader, against transformers' models.

On CPU with the reference ops (float32, tight tolerance); on a GPU also with the Triton ops
(`get_ops("cuda")`), whose float32 dots may run in TF32: compared relative to the logits' scale.
"""

from __future__ import annotations

import math

import pytest
import torch

from batchllm_cli.models.kv_cache import allocate_kv_cache
from batchllm_cli.models.loader import load_model, resolve_model
from batchllm_kernels import AttentionMetadata, get_ops

BLOCK = 4

# head_dim 16: the smallest the Triton kernels take (tl.dot needs K >= 16).
TINY = dict(
    vocab_size=97, hidden_size=96, intermediate_size=80, num_hidden_layers=2,
    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
)
LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
}


def _hf_model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**TINY, rope_theta=1e6, tie_word_embeddings=True))
    else:
        tied = kind == "llama3_tied"
        cfg = LlamaConfig(**TINY, rope_theta=5e5, rope_scaling=LLAMA3_ROPE, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF inits norms to 1 and biases to 0: perturb them so they count
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module", params=["llama3_untied", "llama3_tied", "qwen2"])
def hf_dir(request, tmp_path_factory):
    """(HF model, its save_pretrained directory: config.json + model.safetensors)."""
    hf = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    (path / "tokenizer.json").write_text("{}")  # a model directory needs one; these tests never tokenize
    return hf, path


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def pair(request, hf_dir):
    """(HF model, our model loaded from its directory onto the device with that device's ops)."""
    hf, path = hf_dir
    source = resolve_model(str(path))
    assert source.kind == "safetensors"
    return hf, load_model(source, "float32", request.param, get_ops(request.param))


def _close(got, want, model):
    if model.embed_tokens.weight.device.type == "cpu":
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    else:  # TF32 dots: bound the error by the logits' scale
        assert (got - want).abs().max() <= 1e-2 * want.abs().max() + 1e-4


class Cache:
    """A tiny block allocator for the test: each sequence takes fresh blocks."""

    def __init__(self, model, num_blocks=64):
        device = model.embed_tokens.weight.device
        self.kv = allocate_kv_cache(model.config, num_blocks, BLOCK, torch.float32, device)
        self.next = 1  # block 0 stays unused: padding in block tables points there

    def take(self, num_tokens):
        n = math.ceil(num_tokens / BLOCK)
        self.next += n
        return list(range(self.next - n, self.next))


def _run(model, kv, ids, positions, meta):
    device = model.embed_tokens.weight.device
    meta = AttentionMetadata(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(meta).items()})
    with torch.no_grad():
        hidden = model(torch.tensor(ids, device=device), torch.tensor(positions, device=device), meta, kv)
        return model.compute_logits(hidden).cpu()


def test_prefill_batch_matches_transformers(pair):
    hf, ours = pair
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (7, 13, 1)]
    cache = Cache(ours)
    meta = AttentionMetadata.build(
        block_size=BLOCK,
        q_lens=[len(p) for p in prompts],
        own_ctx_lens=[0] * len(prompts),
        own_block_tables=[cache.take(len(p)) for p in prompts],
        shared_ids=[-1] * len(prompts),
        shared_lens=[],
        shared_block_tables=[],
    )
    ids = [t for p in prompts for t in p]
    positions = [i for p in prompts for i in range(len(p))]
    logits = _run(ours, cache.kv, ids, positions, meta)
    start = 0
    for p in prompts:
        with torch.no_grad():
            want = hf(torch.tensor([p])).logits[0]
        _close(logits[start : start + len(p)], want, ours)
        start += len(p)


def test_shared_prefix_then_suffixes_then_decode_match_transformers(pair):
    """Prefix prefilled once; two suffixes attend to it as a shared segment; then one decode each."""
    hf, ours = pair
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 97, (9,), generator=gen).tolist()  # not a multiple of BLOCK
    suffixes = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (5, 3)]
    cache = Cache(ours)
    prefix_blocks = cache.take(len(prefix))
    meta = AttentionMetadata.build(
        block_size=BLOCK, q_lens=[len(prefix)], own_ctx_lens=[0], own_block_tables=[prefix_blocks],
        shared_ids=[-1], shared_lens=[], shared_block_tables=[],
    )
    _run(ours, cache.kv, prefix, list(range(len(prefix))), meta)

    own = [cache.take(len(s) + 1) for s in suffixes]  # room for the decode token
    meta = AttentionMetadata.build(
        block_size=BLOCK, q_lens=[len(s) for s in suffixes], own_ctx_lens=[0, 0], own_block_tables=own,
        shared_ids=[0, 0], shared_lens=[len(prefix)], shared_block_tables=[prefix_blocks],
    )
    ids = suffixes[0] + suffixes[1]
    pos = [len(prefix) + i for s in suffixes for i in range(len(s))]
    suffix_logits = _run(ours, cache.kv, ids, pos, meta)

    nxt = [int(suffix_logits[len(suffixes[0]) - 1].argmax()), int(suffix_logits[-1].argmax())]
    meta = AttentionMetadata.build(
        block_size=BLOCK, q_lens=[1, 1], own_ctx_lens=[len(s) for s in suffixes], own_block_tables=own,
        shared_ids=[0, 0], shared_lens=[len(prefix)], shared_block_tables=[prefix_blocks],
    )
    decode_logits = _run(ours, cache.kv, nxt, [len(prefix) + len(s) for s in suffixes], meta)

    start = 0
    for i, s in enumerate(suffixes):
        with torch.no_grad():
            want = hf(torch.tensor([prefix + s + [nxt[i]]])).logits[0]
        got = suffix_logits[start : start + len(s)]
        _close(got, want[len(prefix) : len(prefix) + len(s)], ours)
        _close(decode_logits[i], want[-1], ours)
        start += len(s)
