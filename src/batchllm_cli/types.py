"""Boundary objects shared by io, planner and engine: pure Python, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

FinishReason = Literal["stop", "length"]
MAX_LOGPROBS = 20  # most alternatives per token (OpenAI's top_logprobs limit)
MAX_PENALTY = 2.0  # presence / frequency penalty range, as OpenAI's
MAX_BIAS = 100.0  # logit_bias range, as OpenAI's
# Temperatures below this are greedy (vLLM's _SAMPLING_EPS): dividing float32 logits by less
# than about 1e-38 overflows to inf and samples garbage.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded; the fields and defaults users know from vLLM.

    temperature 0 means greedy. seed None means "derived from the job seed and the request's
    index", so a run is reproducible either way and never depends on batch composition.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always produce max_tokens
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one (0 = off)
    presence_penalty: float = 0.0  # subtracted from the logit of every token already output
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the output
    repetition_penalty: float = 1.0  # logits of prompt and output tokens divided by it (> 0 logits) or multiplied
    logprobs: int | None = None  # None = none; k = each output token's logprob and the k most likely
    min_tokens: int = 0  # no EOS and no stop string before this many tokens (at most max_tokens)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the logits (OpenAI's)
    # vLLM's stop_token_ids: drawing one ends the request ("stop"; the token stays in token_ids,
    # and in the text unless it is a special token); kept out before min_tokens, as EOS is
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        from batchllm_cli.errors import ConfigError

        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            object.__setattr__(self, "temperature", 0.0)  # greedy: see MIN_TEMPERATURE
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -MAX_PENALTY <= getattr(self, name) <= MAX_PENALTY:
                raise ConfigError(f"{name} must be in [-{MAX_PENALTY}, {MAX_PENALTY}], got {getattr(self, name)}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not -MAX_BIAS <= b <= MAX_BIAS for _, b in self.logit_bias):
            raise ConfigError(f"logit_bias values must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
        if self.min_tokens < 0:
            raise ConfigError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.min_tokens > self.max_tokens:
            raise ConfigError(f"min_tokens {self.min_tokens} is above max_tokens {self.max_tokens}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ConfigError(f"stop_token_ids must be token ids >= 0, got {list(self.stop_token_ids)}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ConfigError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    # The derived flags below are read per request per step: cached (frozen fields never change).
    @cached_property
    def has_penalties(self) -> bool:
        """Whether the logits depend on the tokens seen so far (presence, frequency, repetition)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @cached_property
    def is_plain_greedy(self) -> bool:
        """Whether the token is the argmax of the raw logits, with no logprob report: greedy,
        no penalty, bias or min_tokens (the sampler's fast path)."""
        return (self.temperature == 0 and not self.has_penalties and not self.logit_bias
                and not self.min_tokens and self.logprobs is None)

    @cached_property
    def stops_on_eos_only(self) -> bool:
        """Whether only EOS (or max_tokens) can end the request: no stop strings, no
        stop_token_ids, no min_tokens (the stop check's fast path)."""
        return not (self.stop or self.stop_token_ids or self.min_tokens)


@dataclass(frozen=True, eq=False)
class Request:
    """One tokenized prompt of the job, ready for the planner and the engine."""

    index: int  # 0-based position in the job; the planner's and engine's handle for it
    id: str | int  # the user's id (its JSON type kept), echoed in the output
    prompt_ids: np.ndarray  # [prompt_len] int32
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @cached_property
    def prompt_len(self) -> int:  # read per request per step: cached
        return int(self.prompt_ids.shape[0])


@dataclass(frozen=True)
class TopLogprob:
    """A token and its log-probability under the model (before temperature and penalties)."""

    token_id: int
    logprob: float
    token: str = ""  # its text, filled in when the request finishes


@dataclass(frozen=True)
class TokenLogprob:
    """One output token's log-probability and the most likely tokens at its position."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()  # most likely first; as many as SamplingParams.logprobs
    token: str = ""


@dataclass(frozen=True)
class Completion:
    """The result of one request, handed back as soon as the request finishes."""

    index: int
    id: str | int  # the request's id
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    shared_prefix_tokens: int  # prompt tokens whose KV came from the group's shared prefix
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id, when the request asked

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)
