"""EchoBackend: a job Backend without a model that answers each prompt with its own text.

The test double of the engine for the io layer: it holds nothing per request (it walks the
record stream lazily while it "runs"), so a job's memory with it is the io layer's alone. A
"token" is a space-separated word, so that context-length checks have something to count.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from batchllm_cli.io.reader import BadLine, InputRecord, Kind
from batchllm_cli.types import Completion, SamplingParams


PROGRESS_EVERY = 256  # requests between progress calls, like an engine step finishing several


class _Progress:
    __slots__ = ("requests_done", "prompt_tokens", "prefill_tokens", "output_tokens", "elapsed_s")

    def __init__(self) -> None:
        self.requests_done = self.prompt_tokens = self.prefill_tokens = self.output_tokens = 0
        self.elapsed_s = 0.0

    @property
    def prefix_tokens_saved(self) -> int:
        return 0  # every prompt token is "prefilled"

    def set(self, done: int, tokens: int) -> "_Progress":
        self.requests_done = done
        self.prompt_tokens = self.prefill_tokens = self.output_tokens = tokens
        return self


class EchoBackend:
    """Echoes prompts (the last message's content for chats) whole."""

    model_name = "echo"
    extra_requests = 0  # one answer per line, whatever its n

    def __init__(self, defaults: SamplingParams | None = None, max_model_len: int | None = None,
                 on_item: Callable[[InputRecord], None] | None = None) -> None:
        self.defaults = defaults or SamplingParams()
        self.max_model_len = max_model_len
        self.on_item = on_item  # called as each request is "run" (tests: fail or interrupt here)
        self._records: Iterator[InputRecord] = iter(())

    def prepare(self, records: Iterator[tuple[InputRecord, bool]]) -> list[BadLine]:
        pending = (rec for rec, done in records if not done)
        if self.max_model_len is None:
            self._records = pending  # consumed lazily by run(): nothing is held
            return []
        kept, rejected = [], []
        for rec in pending:
            n = _count_tokens(_text(rec)) + (rec.sampling.max_tokens or self.defaults.max_tokens)
            if n > self.max_model_len:
                message = f"{n} tokens exceed the context of {self.max_model_len}"
                rejected.append(BadLine(rec.line, rec.id, "context_length_exceeded", message, None,
                                        rec.kind.startswith("openai")))
            else:
                kept.append(rec)
        self._records = iter(kept)
        return rejected

    def run(self, on_progress: Callable[[Any], None]) -> Iterator[tuple[Kind, tuple[Completion, ...], int]]:
        progress = _Progress()
        done = tokens = 0  # prompt = prefill = output tokens: summed in locals, copied at reports
        for rec in self._records:
            if self.on_item is not None:
                self.on_item(rec)
            text = _text(rec)
            n = _count_tokens(text)
            yield rec.kind, (Completion(done, rec.id, text, _ids(n), "stop", n, 0),), rec.line
            done += 1
            tokens += n
            if done % PROGRESS_EVERY == 0:
                on_progress(progress.set(done, tokens))
        on_progress(progress.set(done, tokens))


_ID_TUPLES: dict[int, tuple[int, ...]] = {}


def _ids(n: int) -> tuple[int, ...]:
    """n made-up output token ids (one shared tuple per length: nothing is allocated per request)."""
    ids = _ID_TUPLES.get(n)
    if ids is None:
        ids = _ID_TUPLES[n] = tuple(range(n))
    return ids


def _count_tokens(text: str) -> int:
    return text.count(" ") + 1


def _text(rec: InputRecord) -> str:
    if rec.prompt is not None:
        return rec.prompt
    assert rec.messages is not None
    return rec.messages[-1]["content"]
