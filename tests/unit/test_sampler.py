"""Sampler: greedy, seeded draws independent of the batch, top-k / top-p support, hash parity."""

import pytest
import torch

from batchllm_cli.engine.sampler import SampleRow, Sampler, mix32, restrict_support
from batchllm_cli.types import SamplingParams


class HostSampler(Sampler):
    """The sampler with its tokens as a host list (the engine keeps them on the device)."""

    def __call__(self, logits, rows):  # noqa: ANN001, ANN204
        return super().__call__(logits, rows).tolist()

VOCAB = 40


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=g) * 2


def test_greedy_is_argmax():
    logits = random_logits(5)
    rows = [SampleRow(SamplingParams(temperature=0.0), i, 0) for i in range(5)]
    assert HostSampler()(logits, rows) == logits.argmax(-1).tolist()


def test_seeded_draws_do_not_depend_on_batch_order_or_company():
    logits = random_logits(6)
    params = [SamplingParams(temperature=0.9, seed=s) for s in (1, 2, None, None, 5, 1)]
    rows = [SampleRow(p, i, 3) for i, p in enumerate(params)]
    sampler = HostSampler(job_seed=7)
    together = sampler(logits, rows)
    alone = [sampler(logits[i : i + 1], [rows[i]])[0] for i in range(6)]
    perm = [4, 2, 0, 5, 1, 3]
    shuffled = sampler(logits[perm], [rows[i] for i in perm])
    mixed_with_greedy = sampler(
        torch.cat([random_logits(3, seed=9), logits]), [SampleRow(SamplingParams(), 99, 0)] * 3 + rows
    )[3:]
    assert together == alone == [shuffled[perm.index(i)] for i in range(6)] == mixed_with_greedy


def test_draws_depend_on_seed_position_and_derived_seed():
    logits = torch.zeros(200, VOCAB)  # uniform: the draw is decided by the noise alone
    base = [SampleRow(SamplingParams(temperature=1.0, seed=1), 0, i) for i in range(200)]
    other_seed = [SampleRow(SamplingParams(temperature=1.0, seed=2), 0, i) for i in range(200)]
    derived = [SampleRow(SamplingParams(temperature=1.0), 0, i) for i in range(200)]
    derived_other_index = [SampleRow(SamplingParams(temperature=1.0), 1, i) for i in range(200)]
    s = HostSampler(job_seed=0)
    a, b, c, d = s(logits, base), s(logits, other_seed), s(logits, derived), s(logits, derived_other_index)
    assert len({tuple(a), tuple(b), tuple(c), tuple(d)}) == 4
    assert len(set(a)) > VOCAB // 2  # positions give different draws
    assert HostSampler(job_seed=1)(logits, derived) != c  # the job seed matters for derived seeds


def test_sampling_follows_the_softmax():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0, 3.0]])
    n = 8000
    rows = [SampleRow(SamplingParams(temperature=0.7, seed=3), 0, i) for i in range(n)]
    counts = torch.bincount(torch.tensor(HostSampler()(logits.expand(n, 5), rows)), minlength=5) / n
    assert torch.allclose(counts, torch.softmax(logits[0] / 0.7, -1), atol=0.02)


@pytest.mark.parametrize("top_k,top_p,allowed", [(2, 1.0, {4, 1}), (0, 0.8, {4, 1}), (0, 0.5, {4}), (3, 0.99, {4, 1, 0})])
def test_top_k_and_top_p_restrict_the_support(top_k, top_p, allowed):
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0, 3.0]])  # probs 0.084 0.229 0.051 0.011 0.624
    n = 3000
    rows = [SampleRow(SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, seed=0), 0, i) for i in range(n)]
    drawn = set(HostSampler()(logits.expand(n, 5), rows))
    assert drawn == allowed


def test_restrict_support_keeps_at_least_the_best_token():
    scaled = torch.tensor([[0.0, 5.0, 1.0]])
    out = restrict_support(scaled, torch.tensor([0]), torch.tensor([1e-6]))
    assert torch.isfinite(out).tolist() == [[False, True, False]]


def test_hash_is_the_same_for_python_ints_and_tensors():
    xs = [0, 1, 12345, 2**32 - 1, 0x9E3779B9]
    assert mix32(torch.tensor(xs)).tolist() == [mix32(x) for x in xs]
    assert len({mix32(x) for x in range(1000)}) == 1000  # a bijection on 32 bits
