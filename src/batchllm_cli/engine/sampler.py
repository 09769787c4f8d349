"""The sampler: penalties, greedy, temperature, top-k, top-p and min-p, with per-request random
streams; and the logprobs of what it drew, for the requests that ask.

Random draws are Gumbel-max with noise from a counter-based integer hash of
(request seed, output position, vocab id), computed vectorized in torch integer arithmetic.
A request's tokens therefore depend only on its own logits and seed, never on which other
requests share the batch or in what order, and the same on CPU and GPU (no torch.Generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from batchllm_cli.engine.logits import PenaltyState, build_token_logprobs, logprob_tensors, on_device, penalize
from batchllm_cli.types import SamplingParams, TokenLogprob

_MASK32 = 0xFFFFFFFF
# Rows per chunk of the noise computation: bounds the [rows, vocab] int64 temporaries.
_ROWS_PER_CHUNK = 64
# Domain tags, so that an explicit seed never collides with a derived (job seed, index) one.
_TAG_EXPLICIT = 0x5EED0001
_TAG_DERIVED = 0x5EED0002


def _mul32(x: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """(x * c) mod 2**32 for x in [0, 2**32), without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer hash (the "lowbias32" mixer); works on Python ints and int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


@dataclass(slots=True)
class SampleRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    request_index: int
    position: int  # output position of the token to draw (0 for the first)
    prompt_ids: Sequence[int] = ()  # read only for a repetition penalty
    output_ids: Sequence[int] = ()  # the request's tokens so far; read only for penalties


def row_key(row: SampleRow, job_seed: int) -> int:
    """The 32-bit key of a row's random stream: its seed and output position."""
    if row.params.seed is not None:
        words = (_TAG_EXPLICIT, row.params.seed & _MASK32, (row.params.seed >> 32) & _MASK32)
    else:
        words = (_TAG_DERIVED, job_seed & _MASK32, row.request_index & _MASK32)
    key = mix32(row.position & _MASK32)
    for w in words:
        key = mix32(key ^ w)
    return int(key)


def uniform_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] float64 in (0, 1): 52 bits from two hashes of (row key, vocab id)."""
    vocab = mix32(torch.arange(vocab_size, dtype=torch.int64, device=keys.device) + 0x9E3779B9)
    h1 = mix32(keys[:, None] ^ vocab[None, :])
    h2 = mix32(h1 ^ 0x85EBCA6B)
    bits = (h1 >> 6) * (1 << 26) + (h2 >> 6)  # 26 + 26 = 52 bits: bits + 0.5 is exact
    return (bits.to(torch.float64) + 0.5) / float(1 << 52)


def restrict_support(
    scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor | None = None
) -> torch.Tensor:
    """`scaled` logits [rows, vocab] with tokens outside each row's top-k / top-p / min-p set at -inf.

    top_k [rows] int64 (0 = no cut), top_p [rows] float32 (1 = no cut), min_p [rows] float32
    (0 = no cut). The top-p set is the smallest set of most likely tokens whose probability
    reaches top_p (at least one token); min-p keeps the tokens at least min_p times as likely
    as the most likely one.
    """
    vals, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
    drop = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    vals = vals.masked_fill(drop, float("-inf"))
    probs = torch.softmax(vals, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop |= mass_before >= top_p[:, None]
    if min_p is not None:
        drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False
    mask = torch.zeros_like(drop).scatter(1, order, drop)
    return scaled.masked_fill(mask, float("-inf"))


class Sampler:
    """Draws one token per row of logits, as each row's SamplingParams say."""

    def __init__(self, job_seed: int = 0, eos_token_ids: Sequence[int] = ()) -> None:
        self.job_seed = job_seed
        self.eos_token_ids = list(eos_token_ids)  # never drawn by a row short of its min_tokens (nor its stop_token_ids)
        self.penalties: PenaltyState | None = None  # made at the first penalized row (needs the vocab)

    def release(self, row: SampleRow) -> None:
        """The request of `row` is done: its penalty counts (if any) free their device row."""
        if self.penalties is not None:
            self.penalties.release(row)

    def reset(self) -> None:
        """Forgets every request's penalty counts (a new job starts)."""
        self.penalties = None

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
        """logits [rows, vocab] float32 -> [rows] int64 token ids, on the logits' device (no
        wait for the device: per-row parameters travel in non-blocking copies)."""
        assert logits.shape[0] == len(rows)
        if all(r.params.is_plain_greedy for r in rows):
            return torch.argmax(logits, dim=-1)
        penalized = [i for i, r in enumerate(rows) if r.params.has_penalties]
        too_short = [i for i, r in enumerate(rows) if r.position < r.params.min_tokens
                     and (self.eos_token_ids or r.params.stop_token_ids)]
        biased = [i for i, r in enumerate(rows) if r.params.logit_bias]
        if penalized or too_short or biased:
            logits = logits.clone()  # the caller's raw logits stay as they are (logprob reports)
        for i in biased:
            ids, bias = zip(*rows[i].params.logit_bias)
            logits[i, _on(list(ids), torch.int64, logits.device)] += _on(list(bias), logits.dtype, logits.device)
        if too_short and self.eos_token_ids:
            row_idx = _on(too_short, torch.int64, logits.device)[:, None]
            eos_idx = _on(self.eos_token_ids, torch.int64, logits.device)[None, :]
            logits[row_idx, eos_idx] = float("-inf")
        for i in too_short:  # a row's own stop tokens are kept out as EOS is (vLLM's min_tokens)
            if rows[i].params.stop_token_ids:
                logits[i, _on(list(rows[i].params.stop_token_ids), torch.int64, logits.device)] = float("-inf")
        device = logits.device
        if penalized:
            # counts of the tokens drawn so far live on the device (PenaltyState): no host copy
            # of the previous step's tokens is needed, so the loop may run a step ahead
            if self.penalties is None:
                self.penalties = PenaltyState(logits.shape[-1], device)
            sub = [rows[i] for i in penalized]
            state_rows = self.penalties.rows_of(
                sub, [r.prompt_ids if r.params.repetition_penalty != 1.0 else None for r in sub], [r.output_ids for r in sub])
            at = _on(penalized, torch.int64, device)
            logits[at] = penalize(
                logits[at], self.penalties.counts[state_rows], self.penalties.in_prompt[state_rows],
                *(_on([getattr(r.params, f) for r in sub], torch.float32, device)
                  for f in ("presence_penalty", "frequency_penalty", "repetition_penalty")),
            )
        out = torch.argmax(logits, dim=-1)  # greedy rows; random rows are overwritten below
        random_rows = [i for i, r in enumerate(rows) if r.params.temperature > 0]
        for start in range(0, len(random_rows), _ROWS_PER_CHUNK):
            chunk = random_rows[start : start + _ROWS_PER_CHUNK]
            index = _on(chunk, torch.int64, device)
            out[index] = self._draw(logits[index], [rows[i] for i in chunk])
        if penalized:
            self.penalties.record(state_rows, out[at])
        return out

    def _draw(self, logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        device = logits.device
        temperature = _on([r.params.temperature for r in rows], torch.float32, device)
        scaled = logits.float() / temperature[:, None]
        if any(r.params.top_k > 0 or r.params.top_p < 1.0 or r.params.min_p > 0 for r in rows):
            top_k = _on([r.params.top_k for r in rows], torch.int64, device)
            top_p = _on([r.params.top_p for r in rows], torch.float32, device)
            min_p = None
            if any(r.params.min_p > 0 for r in rows):
                min_p = _on([r.params.min_p for r in rows], torch.float32, device)
            scaled = restrict_support(scaled, top_k, top_p, min_p)
        keys = _on([row_key(r, self.job_seed) for r in rows], torch.int64, device)
        gumbel = -torch.log(-torch.log(uniform_noise(keys, logits.shape[-1])))
        # argmax(logit / T + Gumbel) is a draw from softmax(logit / T) over the kept tokens
        return torch.argmax(scaled.double() + gumbel, dim=-1)


_on = on_device


@dataclass
class PendingLogprobs:
    """The logprobs of a step's rows that ask for them, as tensors: on the device at launch,
    then on their way to the host (pinned memory) with the step's tokens; `resolve` after the
    step's tokens arrived makes the reports. Nothing waits for the device at launch."""

    num_rows: int
    wanted: list[int]  # sampling rows that ask
    num_top: list[int]
    tensors: tuple[torch.Tensor, ...]  # tokens [w], chosen [w], top logprobs [w, k], top ids [w, k]

    def to_host(self) -> "PendingLogprobs":
        """The same, copied into pinned host memory without waiting (CUDA); as is on a CPU."""
        if self.tensors[0].device.type != "cuda":
            return self
        host = []
        for t in self.tensors:
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            h.copy_(t, non_blocking=True)
            host.append(h)
        return PendingLogprobs(self.num_rows, self.wanted, self.num_top, tuple(host))

    def resolve(self) -> list[TokenLogprob | None]:
        """Each row's report (None for rows that did not ask); the copies must be done."""
        tokens, chosen, top_vals, top_ids = (t.tolist() for t in self.tensors)
        out: list[TokenLogprob | None] = [None] * self.num_rows
        for i, lp in zip(self.wanted, build_token_logprobs(tokens, chosen, top_vals, top_ids, self.num_top)):
            out[i] = lp
        return out


def pending_logprobs(logits: torch.Tensor, rows: Sequence[SampleRow], token_ids: torch.Tensor) -> PendingLogprobs | None:
    """The logprobs of the rows that ask, computed on the device (None: no row asks)."""
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if not wanted:
        return None
    num_top = [rows[i].params.logprobs or 0 for i in wanted]
    at = _on(wanted, torch.int64, logits.device)
    tokens = token_ids.to(logits.device)[at]
    return PendingLogprobs(len(rows), wanted, num_top, (tokens, *logprob_tensors(logits[at], tokens, max(num_top))))


def report_logprobs(
    logits: torch.Tensor, rows: Sequence[SampleRow], token_ids: Sequence[int] | torch.Tensor
) -> list[TokenLogprob | None]:
    """For each row that asks for logprobs, its drawn token's logprob and top alternatives
    (waits for the device: the engine keeps them pending instead)."""
    ids = token_ids if isinstance(token_ids, torch.Tensor) else torch.tensor(list(token_ids), dtype=torch.int64)
    pending = pending_logprobs(logits, rows, ids)
    return [None] * len(rows) if pending is None else pending.resolve()
