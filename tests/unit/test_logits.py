"""Penalties and logprob reports: against a plain per-token loop of the definitions."""

from __future__ import annotations

import pytest
import torch

from batchllm_cli.engine.logits import apply_penalties, token_logprobs
from batchllm_cli.engine.sampler import SampleRow, Sampler, report_logprobs, restrict_support
from batchllm_cli.types import SamplingParams


class HostSampler(Sampler):
    """The sampler with its tokens as a host list (the engine keeps them on the device)."""

    def __call__(self, logits, rows):  # noqa: ANN001, ANN204
        return super().__call__(logits, rows).tolist()

VOCAB = 30


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _penalized_by_loop(row: torch.Tensor, prompt, output, presence, frequency, repetition) -> torch.Tensor:
    out = row.clone()
    for tok in set(prompt) | set(output):
        out[tok] = out[tok] / repetition if out[tok] > 0 else out[tok] * repetition
    for tok in set(output):
        out[tok] -= frequency * output.count(tok) + presence
    return out


def test_penalties_follow_their_definitions_row_by_row():
    logits = _logits(4)
    prompts = [[1, 2, 3], [], [5, 5, 6], [7]]
    outputs = [[2, 2, 9], [4], [], [7, 7, 7, 8]]
    presence, frequency, repetition = [0.5, 0.0, 1.0, -0.3], [0.2, 1.5, 0.0, 0.4], [1.3, 1.0, 0.8, 2.0]
    got = apply_penalties(logits, prompts, outputs, presence, frequency, repetition)
    for i in range(4):
        want = _penalized_by_loop(logits[i], prompts[i], outputs[i], presence[i], frequency[i], repetition[i])
        assert torch.allclose(got[i], want, atol=1e-6), i
    untouched = [t for t in range(VOCAB) if t not in {1, 2, 3, 9}]
    assert torch.equal(got[0, untouched], logits[0, untouched])


def test_greedy_rows_with_penalties_avoid_what_they_repeated():
    logits = torch.zeros(2, VOCAB)
    logits[:, 4] = 2.0  # the favourite
    logits[:, 6] = 1.5
    plain = SampleRow(SamplingParams(), 0, 3, (), (4, 4, 4))
    penalized = SampleRow(SamplingParams(frequency_penalty=0.5), 1, 3, (), (4, 4, 4))
    assert HostSampler()(logits, [plain, penalized]) == [4, 6]
    repeated_prompt = SampleRow(SamplingParams(repetition_penalty=2.0), 2, 0, (4,), ())
    assert HostSampler()(logits[:1], [repeated_prompt]) == [6]  # 2.0 / 2 < 1.5


def test_min_p_keeps_tokens_at_least_that_fraction_of_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08]])
    scaled = probs.log()
    no = torch.zeros(1, dtype=torch.int64)
    one = torch.ones(1)
    kept = restrict_support(scaled, no, one, torch.tensor([0.2])).isfinite()[0].tolist()
    assert kept == [True, True, True, False]  # 0.08 < 0.2 * 0.5 <= 0.12
    assert restrict_support(scaled, no, one, torch.tensor([0.0])).isfinite().all()
    rows = [SampleRow(SamplingParams(temperature=1.0, min_p=0.7, seed=1), 0, i) for i in range(300)]
    assert set(HostSampler()(scaled.expand(300, 4), rows)) == {0}  # only 0.5 is within 0.7 x 0.5


def test_token_logprobs_are_log_softmax_of_the_raw_logits():
    logits = _logits(3, seed=1)
    ref = torch.log_softmax(logits, -1)
    out = token_logprobs(logits, [5, 0, 29], [0, 3, 1])
    assert [lp.token_id for lp in out] == [5, 0, 29]
    for row, lp in enumerate(out):
        assert lp.logprob == pytest.approx(ref[row, lp.token_id].item(), abs=1e-6)
    assert out[0].top == ()
    top = ref[1].topk(3)
    assert [t.token_id for t in out[1].top] == top.indices.tolist()
    assert [t.logprob for t in out[1].top] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert len(out[2].top) == 1 and out[2].top[0].token_id == ref[2].argmax().item()


def test_reports_go_only_to_rows_that_ask_and_ignore_temperature():
    logits = _logits(3, seed=2)
    rows = [
        SampleRow(SamplingParams(), 0, 0),
        SampleRow(SamplingParams(logprobs=2, temperature=5.0, seed=3), 1, 0),
        SampleRow(SamplingParams(logprobs=0, repetition_penalty=1.5), 2, 0, (1, 2), ()),
    ]
    tokens = HostSampler()(logits, rows)
    reports = report_logprobs(logits, rows, tokens)
    assert reports[0] is None
    ref = torch.log_softmax(logits, -1)
    assert reports[1].token_id == tokens[1] and len(reports[1].top) == 2
    assert reports[1].logprob == pytest.approx(ref[1, tokens[1]].item(), abs=1e-6)
    assert reports[2].top == () and reports[2].logprob == pytest.approx(ref[2, tokens[2]].item(), abs=1e-6)


def test_rows_short_of_min_tokens_never_draw_eos():
    logits = torch.zeros(3, VOCAB)
    logits[:, 2] = 5.0  # EOS is the favourite
    eos = HostSampler(eos_token_ids=[2])
    rows = [SampleRow(SamplingParams(min_tokens=2), 0, 1), SampleRow(SamplingParams(min_tokens=2), 1, 2),
            SampleRow(SamplingParams(min_tokens=4, temperature=1.0, seed=1), 2, 0)]
    assert eos(logits, rows)[:2] == [0, 2]  # position 1 < 2: not EOS; position 2: EOS allowed
    draws = eos(logits[2:].expand(50, VOCAB), [SampleRow(rows[2].params, 2, 0)] * 50)
    assert 2 not in draws
    assert HostSampler()(logits[:1], rows[:1]) == [2]  # no EOS ids known: nothing to keep out
    assert logits[0, 2] == 5.0  # the caller's logits are untouched


def test_logit_bias_moves_the_draw_but_not_the_reported_logprobs():
    logits = _logits(2, seed=4)
    top = int(logits[0].argmax())
    other = (top + 1) % VOCAB
    rows = [SampleRow(SamplingParams(logit_bias=((top, -100.0),)), 0, 0),
            SampleRow(SamplingParams(logit_bias=((other, 100.0),), logprobs=0), 1, 0)]
    tokens = HostSampler()(logits, rows)
    assert tokens[0] == int(logits[0].topk(2).indices[1]) and tokens[1] == other
    [_, report] = report_logprobs(logits, rows, tokens)
    assert report.logprob == pytest.approx(torch.log_softmax(logits[1], -1)[other].item(), abs=1e-6)


def test_penalty_state_counts_draws_on_the_device_and_reuses_released_rows():
    # The sampler keeps each penalized request's counts on the device (no host copy of the last
    # step's tokens); after some draws a row must penalize exactly as the host lists would.
    from batchllm_cli.engine.logits import PenaltyState

    state = PenaltyState(VOCAB, torch.device("cpu"))
    owners = [object() for _ in range(10)]  # more than the first allocation holds: it grows
    prompts = [[1, 2, 3] if i % 2 else None for i in range(10)]
    rows = state.rows_of(owners, prompts, [[4, 4]] * 10)  # first seen with two tokens drawn already
    assert len(state) == 10 and sorted(rows.tolist()) == list(range(10))
    drawn = torch.tensor([5] * 10)
    state.record(state.rows_of(owners, prompts, [[]] * 10), drawn)  # known rows: outputs not read again
    assert state.counts[rows[0], 4] == 2 and state.counts[rows[0], 5] == 1
    assert bool(state.in_prompt[rows[1], 2]) and not bool(state.in_prompt[rows[0], 2])
    logits = _logits(2)
    want = apply_penalties(logits, [[1, 2, 3], [1, 2, 3]], [[4, 4, 5], [4, 4, 5]], [0.5, 0.1], [0.3, 0.0], [1.4, 1.2])
    from batchllm_cli.engine.logits import penalize

    pair = rows[1:2].repeat(2)
    got = penalize(logits, state.counts[pair], state.in_prompt[pair], torch.tensor([0.5, 0.1]),
                   torch.tensor([0.3, 0.0]), torch.tensor([1.4, 1.2]))
    torch.testing.assert_close(got, want)
    state.release(owners[3])
    newcomer = object()
    (row,) = state.rows_of([newcomer], [None], [[]]).tolist()
    assert row == rows[3].item()  # the freed row, zeroed for its new request
    assert state.counts[row].sum() == 0 and not state.in_prompt[row].any()
