"""Boundary objects shared by io, planner and engine: pure Python, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FinishReason = Literal["stop", "length"]


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

    def __post_init__(self) -> None:
        from batchllm_cli.errors import ConfigError

        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")


@dataclass(frozen=True, eq=False)
class Request:
    """One tokenized prompt of the job, ready for the planner and the engine."""

    index: int  # 0-based position in the job; the planner's and engine's handle for it
    id: str  # the user's id, echoed in the output
    prompt_ids: np.ndarray  # [prompt_len] int32
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @property
    def prompt_len(self) -> int:
        return int(self.prompt_ids.shape[0])


@dataclass(frozen=True)
class Completion:
    """The result of one request, handed back as soon as the request finishes."""

    index: int
    id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    shared_prefix_tokens: int  # prompt tokens whose KV came from the group's shared prefix

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)
