"""How much model work a run has left, in tokens: what the progress display's ETA is made of.

Output tokens left: each unfinished request's max_tokens less what it has generated (an upper
bound: a request may stop earlier, at EOS or a stop string). Prompt tokens left: the prompts not
prefilled yet, at the share of prompt tokens the run has had to compute so far (the rest came
from shared prefixes). Both come from the engine's running totals and the Completions as they
finish; nothing here looks inside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Sequence

from batchllm_cli.types import Completion, Request


@dataclass(frozen=True)
class RunProgress:
    """The engine's progress (the fields run_job reads) plus the work left."""

    requests_done: int
    requests_total: int
    prompt_tokens: int
    prefill_tokens: int
    output_tokens: int
    elapsed_s: float
    prefix_tokens_saved: int
    prompt_left: int  # prompt tokens still to compute (estimated)
    output_left: int  # output tokens the unfinished requests may still make (an upper bound)


class WorkLeft:
    """Tracks the tokens left of a run over `requests` (indexed as its Completions are)."""

    def __init__(self, requests: Sequence[Request]) -> None:
        self._max_tokens = [r.sampling.max_tokens for r in requests]
        self._budget = sum(self._max_tokens)  # output tokens the unfinished requests may still make...
        self._made_by_finished = 0  # ...less what they made: total output less this
        self._prompt_total = sum(r.prompt_len for r in requests)

    def finished(self, completion: Completion) -> None:
        self._budget -= self._max_tokens[completion.index]
        self._made_by_finished += completion.completion_tokens

    def left(self, p: Any) -> tuple[int, int]:
        """(prompt tokens, output tokens) left; p: engine progress (prompt_tokens,
        prefill_tokens, output_tokens: totals so far)."""
        computed_share = p.prefill_tokens / p.prompt_tokens if p.prompt_tokens else 1.0
        prompt_left = max(0, self._prompt_total - p.prompt_tokens) * min(1.0, computed_share)
        output_left = max(0, self._budget - (p.output_tokens - self._made_by_finished))
        return int(prompt_left), output_left

    def tap(self, stream: Iterable[Completion]) -> Iterator[Completion]:
        """`stream`, counting each Completion as it passes."""
        for completion in stream:
            self.finished(completion)
            yield completion

    def reporting(self, on_progress: Callable[[Any], None]) -> Callable[[Any], None]:
        """An on_progress for the engine that hands `on_progress` a RunProgress."""
        keep = [f.name for f in fields(RunProgress) if not f.name.endswith("_left")]

        def report(p: Any) -> None:
            prompt_left, output_left = self.left(p)
            on_progress(RunProgress(**{k: getattr(p, k) for k in keep}, prompt_left=prompt_left, output_left=output_left))

        return report
