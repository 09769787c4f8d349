"""Stop conditions: EOS ids from the model's config, a request's stop_token_ids and stop strings;
max_tokens is the scheduler's.

A stop string ends its request with finish_reason "stop" and the text is cut before it. The text
of a request with stop strings is built incrementally; other requests are decoded once at the end.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from batchllm_cli.engine.state import RequestState
from batchllm_cli.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from batchllm_cli.types import FinishReason, TokenLogprob


class StopChecker:
    """Decides, token by token, whether a request stops; then gives its final text."""

    def __init__(self, tokenizer: Tokenizer | None, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self._detok: dict[int, IncrementalDetokenizer] = {}
        self._cut_text: dict[int, str] = {}

    def __call__(self, state: RequestState) -> FinishReason | None:
        """Called after each new token of `state`."""
        token = state.output_ids[-1]
        params = state.request.sampling
        if params.stops_on_eos_only:
            return "stop" if token in self.eos_token_ids and not params.ignore_eos else None
        early = state.num_output < params.min_tokens  # no stop yet (the sampler keeps EOS out)
        if token in self.eos_token_ids and not params.ignore_eos and not early:
            return "stop"
        if params.stop_token_ids and token in params.stop_token_ids and not early:
            return "stop"
        if params.stop and self.tokenizer is not None:
            detok = self._detok.get(state.index)
            if detok is None:
                detok = self._detok[state.index] = IncrementalDetokenizer(self.tokenizer)
            old_len = len(detok.text)
            if detok.add(token) and not early:
                # a match may straddle the old end: look back one stop string's length
                start = max(0, old_len - max(len(s) for s in params.stop) + 1)
                hits = [p for p in (detok.text.find(s, start) for s in params.stop) if p >= 0]
                if hits:
                    self._cut_text[state.index] = detok.text[: min(hits)]
                    del self._detok[state.index]
                    return "stop"
        return None

    def final_text(self, state: RequestState) -> str:
        """The request's output text (cut before a stop string that ended it)."""
        self._detok.pop(state.index, None)
        cut = self._cut_text.pop(state.index, None)
        if cut is not None:
            return cut
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(state.output_ids)

    def with_token_texts(self, logprobs: Sequence[TokenLogprob]) -> tuple[TokenLogprob, ...]:
        """`logprobs` with each token's own text filled in (empty without a tokenizer)."""
        if self.tokenizer is None:
            return tuple(logprobs)
        text = self.tokenizer.token_text
        return tuple(
            replace(lp, token=text(lp.token_id), top=tuple(replace(t, token=text(t.token_id)) for t in lp.top))
            for lp in logprobs
        )
