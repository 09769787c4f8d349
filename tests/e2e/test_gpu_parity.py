"""On a GPU: random-weight Llama-3.2-1B and Llama-3.1-8B shapes, our engine vs transformers.

Both models hold the same bf16 weights (ours filled by the random preset, copied into HF's
LlamaForCausalLM through our own HF-name map). Our engine generates greedily (Triton kernels,
prefix sharing, CUDA graphs for decode steps, piecewise graphs for prefill steps); then both
models score the prompt plus our tokens in one forward pass (teacher forcing). The two implementations' logits must agree
closely everywhere (within LOGIT_TOL of the logits' range), and each of our tokens must be
HF's argmax, or a near tie whose gap to HF's best is within twice the measured difference
between the two models' logits at that position (bf16 rounding decided it; generation may then
follow another path than HF's own, which is why the check is teacher-forced). The share of
exact argmax agreement is printed for the record.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

NEW_TOKENS = 16
LOGIT_TOL = 0.05  # of the logits' range at a position: bf16 rounding through 16-32 layers


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


def _our_logits(model, ids: list[int]) -> torch.Tensor:
    """Our model's logits [len(ids), vocab] for one sequence, prefilled alone in a fresh cache."""
    from batchllm_cli.models.kv_cache import allocate_kv_cache
    from batchllm_kernels.metadata import AttentionMetadata

    block = 16
    blocks = -(-len(ids) // block)
    kv = allocate_kv_cache(model.config, blocks + 1, block, torch.bfloat16, torch.device("cuda"))
    meta = AttentionMetadata.build(
        block_size=block, q_lens=[len(ids)], own_ctx_lens=[0],
        own_block_tables=[list(range(1, blocks + 1))], shared_ids=[-1], shared_lens=[],
        shared_block_tables=[], device="cuda",
    )
    tokens = torch.tensor(ids, device="cuda")
    hidden = model(tokens, torch.arange(len(ids), device="cuda"), meta, kv)
    return model.compute_logits(hidden).float()


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
    assert llm.runner.mixed is not None and llm.runner.mixed.replays > 0  # the prefill steps: piecewise graphs
    hf = _hf_twin(source, ours)
    exact = total = 0
    worst = 0.0
    for prompt, c in zip(prompts, done):
        gen = list(c.token_ids)
        assert len(gen) == NEW_TOKENS
        ids = prompt + gen
        rows = slice(len(prompt) - 1, len(prompt) - 1 + NEW_TOKENS)  # the rows that chose gen
        with torch.inference_mode():
            want = hf(torch.tensor([ids], device="cuda")).logits[0, rows].float()  # [NEW_TOKENS, vocab]
            got = _our_logits(ours, ids)[rows]
        span = want.max(dim=-1).values - want.min(dim=-1).values
        noise = (got - want).abs().max(dim=-1).values
        worst = max(worst, float((noise / span).max()))
        assert bool((noise <= LOGIT_TOL * span).all()), f"{preset}: logits differ by {noise.tolist()}"
        chosen = torch.tensor(gen, device="cuda")
        gap = want.max(dim=-1).values - want.gather(1, chosen[:, None])[:, 0]
        # the engine's batched run is another bf16 sample of the same noise: allow twice it
        assert bool((gap <= 2 * noise).all()), f"{preset}: HF ranks a token of ours lower by {gap.tolist()} (noise {noise.tolist()})"
        exact += int((want.argmax(dim=-1) == chosen).sum())
        total += NEW_TOKENS
    print(f"{preset}: {exact}/{total} tokens are HF's exact argmax, the rest near ties; "
          f"largest logit difference {worst:.2%} of the range")
    # The per-token checks above are the contract (every token within bf16 noise of HF's best);
    # this floor only catches systematic failure. Random weights make near ties common: the 8B
    # shape read 152/176 and, after the decode launch settings changed, 140/176 exact with the
    # same logit difference (4.4% and 4.5% of the range).
    assert exact >= 0.75 * total
    del hf, llm, ours
    torch.cuda.empty_cache()
