"""On a GPU: random-weight Llama-3.2-1B and Llama-3.1-8B shapes, our engine vs transformers.

Both models hold the same bf16 weights (ours filled by the random preset, copied into HF's
LlamaForCausalLM through our own HF-name map). Our engine generates greedily (Triton kernels,
prefix sharing, CUDA graphs for decode steps); transformers then scores the prompt plus our
tokens in one forward pass (teacher forcing). Each of our tokens must be HF's argmax at its
position, except where HF's top logits are so close that bf16 rounding decides (a near tie):
there our token's logit must be within TIE_TOL of HF's best, and generation after the first
near tie may follow another path, which HF scores the same way. The exact-agreement share is
printed for the record.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

NEW_TOKENS = 16
TIE_TOL = 0.02  # of the logits' range at that position: bf16 noise after 16-32 layers


def _hf_twin(source, ours, device: str = "cuda"):
    """transformers' model of the preset config, holding our model's weights."""
    from transformers import AutoModelForCausalLM

    from batchllm_cli.models.weights import map_hf_name

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(source.hf_config, dtype=torch.bfloat16)
    hf = hf.to_empty(device=device)
    params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in hf.named_parameters():
            target = map_hf_name(name, ours.config)
            if target is None:  # a tied lm_head: tie_weights below
                assert name == "lm_head.weight" and ours.config.tie_word_embeddings, name
                continue
            src = params[target.name].data
            p.copy_(src if target.row_start is None else src[target.row_start : target.row_end])
    if getattr(source.hf_config, "tie_word_embeddings", False):
        hf.tie_weights()
    with torch.device(device):  # its inv_freq buffer was left empty on meta
        hf.model.rotary_emb.__init__(hf.config)
    return hf.eval()


def _prompts(vocab: int) -> list[list[int]]:
    """Two groups sharing a 300-token prefix, and a few unrelated prompts of other lengths."""
    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(100, vocab - 100, (n,), generator=gen).tolist()

    out = []
    for _ in range(2):
        prefix = ids(300)
        out += [prefix + ids(int(n)) for n in (5, 17, 40, 9)]
    out += [ids(n) for n in (1, 64, 513)]
    return out


@pytest.mark.parametrize("preset", ["llama-3.2-1b", "llama-3.1-8b"])
def test_greedy_tokens_match_transformers(preset):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from batchllm_cli.bench.model import bench_source
    from batchllm_cli.engine.llm import LLM
    from batchllm_cli.models.loader import load_model
    from batchllm_cli.types import SamplingParams
    from batchllm_kernels import get_ops

    source = bench_source(preset)
    ours = load_model(source, "bfloat16", "cuda", get_ops("cuda"))
    llm = LLM.from_loaded(source, ours, device="cuda", num_kv_blocks=1024, cuda_graphs=True)
    prompts = _prompts(source.config.vocab_size)
    done = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    assert llm.runner.graphs is not None and llm.runner.graphs.replays + llm.runner.graphs.captures > 0
    hf = _hf_twin(source, ours)
    exact = total = 0
    for prompt, c in zip(prompts, done):
        gen = list(c.token_ids)
        assert len(gen) == NEW_TOKENS
        with torch.inference_mode():
            logits = hf(torch.tensor([prompt + gen], device="cuda")).logits[0].float()
        steps = logits[len(prompt) - 1 : len(prompt) - 1 + NEW_TOKENS]  # [NEW_TOKENS, vocab]
        best = steps.max(dim=-1).values
        ours_logit = steps.gather(1, torch.tensor(gen, device="cuda")[:, None])[:, 0]
        span = steps.max(dim=-1).values - steps.min(dim=-1).values
        gap = best - ours_logit
        assert bool((gap <= TIE_TOL * span).all()), f"{preset}: a token HF ranks clearly lower: gaps {gap.tolist()}"
        exact += int((steps.argmax(dim=-1) == torch.tensor(gen, device="cuda")).sum())
        total += NEW_TOKENS
    print(f"{preset}: {exact}/{total} tokens are HF's exact argmax; the rest are bf16 near ties")
    assert exact >= 0.8 * total
    del hf, llm, ours
    torch.cuda.empty_cache()
