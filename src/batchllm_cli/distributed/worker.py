"""The actors' side of a Ray job: `ShardRunner`, a callable class for `Dataset.map_batches`.

Each row of the dataset is one chunk of a shard (planner/shard.py): its requests, its plan cut
(Plan.restrict) and the job index of each request, pickled by `encode_chunk`. The actor holds
one engine (loaded once, in the constructor) and answers a batch of rows with one row per chunk:
its Completions, job-indexed, pickled (or the batchllm error it raised). A chunk's results come back whole or not at all, so a
chunk that Ray runs again after its actor died cannot give a record twice. Progress goes to the
driver's `ProgressBoard` actor, at most every PROGRESS_EVERY_S per actor. No Ray import here:
Ray Data calls the class and the driver wraps the board in `ray.remote`.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import fields, replace
from typing import Any

import numpy as np

from batchllm_cli import errors
from batchllm_cli.engine.config import EngineConfig
from batchllm_cli.engine.engine import EngineProgress
from batchllm_cli.errors import BatchLLMError
from batchllm_cli.planner.shard import ShardCut
from batchllm_cli.types import Completion

PROGRESS_EVERY_S = 1.0  # an actor's progress reports to the driver, at most this often


def encode_chunk(chunk_id: int, cut: ShardCut) -> dict[str, Any]:
    """A dataset row for one chunk."""
    payload = pickle.dumps((cut.requests, cut.plan, cut.job_index), protocol=pickle.HIGHEST_PROTOCOL)
    return {"chunk": chunk_id, "payload": payload}


def decode_row(completions: bytes, error: bytes) -> list[Completion]:
    """The Completions of one output row (job indices); the actor's error raised again here, as
    the same batchllm error class (a bad model path on a node: ModelError, exit code 4)."""
    if error:
        name, message = pickle.loads(error)
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, BatchLLMError)):
            cls = BatchLLMError
        raise cls(message)
    return pickle.loads(completions)


class ShardRunner:
    """One engine per actor; runs whole chunks (rows made by `encode_chunk`).

    model: as LLM takes it (None, a preset name, or a path that exists on every node).
    config: the job's EngineConfig (its device as the actor sees it: "cuda" with num_gpus=1).
    board: a ProgressBoard actor handle, or None for no progress.
    """

    def __init__(self, model: str | None, config: EngineConfig, board: Any = None) -> None:
        from batchllm_cli.engine.llm import LLM

        self.board = board
        self.llm: Any = None
        self.failure: BatchLLMError | None = None  # told with the first chunk: Ray would retry a
        try:  # failing constructor, and its exceptions reach the driver only as text
            self.llm = LLM(model, config=config)
        except BatchLLMError as exc:
            self.failure = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks, outputs, failures = [], [], []
        for chunk_id, payload in zip(batch["chunk"], batch["payload"]):
            chunks.append(int(chunk_id))
            try:
                outputs.append(self._run(int(chunk_id), payload))
                failures.append(b"")
            except BatchLLMError as exc:  # the driver stops the job with it
                outputs.append(b"")
                failures.append(pickle.dumps((type(exc).__name__, str(exc))))
        return {
            "chunk": np.asarray(chunks, dtype=np.int64),
            "completions": np.asarray(outputs, dtype=object),
            "error": np.asarray(failures, dtype=object),
        }

    def _run(self, chunk_id: int, payload: bytes) -> bytes:
        if self.failure is not None:
            raise self.failure
        requests, plan, job_index = pickle.loads(payload)
        report = _Reporter(self.board, chunk_id)
        done = [replace(c, index=int(job_index[c.index])) for c in self.llm.stream(requests, plan, on_progress=report)]
        report.flush()
        return pickle.dumps(done, protocol=pickle.HIGHEST_PROTOCOL)


class _Reporter:
    """An engine on_progress that tells the board a chunk's latest progress, now and then."""

    def __init__(self, board: Any, chunk_id: int) -> None:
        self.board, self.chunk_id = board, chunk_id
        self.latest: EngineProgress | None = None
        self.sent = 0.0

    def __call__(self, p: EngineProgress) -> None:
        self.latest = p
        if self.board is not None and time.monotonic() - self.sent >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.board is not None and self.latest is not None:
            self.board.report.remote(self.chunk_id, _counts(self.latest))
            self.sent = time.monotonic()


# EngineProgress fields that are not counts of a chunk's work (the driver sets them)
NOT_SUMMED = ("requests_total", "steps", "elapsed_s")


def _counts(p: EngineProgress) -> dict[str, int]:
    """A chunk's progress as counts that add up over chunks (requests, tokens, blocks)."""
    return {f.name: getattr(p, f.name) for f in fields(p) if f.name not in NOT_SUMMED}


class ProgressBoard:
    """The driver's tally of every chunk's latest progress (a Ray actor: `ray.remote(ProgressBoard)`).
    A chunk that runs again reports from zero, replacing its earlier figures."""

    def __init__(self) -> None:
        self.chunks: dict[int, dict[str, int]] = {}

    def report(self, chunk_id: int, counts: dict[str, int]) -> None:
        self.chunks[chunk_id] = counts

    def totals(self) -> dict[str, int]:
        """Each count summed over all chunks."""
        out: dict[str, int] = {}
        for counts in self.chunks.values():
            for name, value in counts.items():
                out[name] = out.get(name, 0) + value
        return out
