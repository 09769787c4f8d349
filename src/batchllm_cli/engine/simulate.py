"""A dry run of the scheduler with no model: every request runs to max_tokens.

The CLI's `plan` command uses it to estimate steps and peak KV memory before any model work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.caching import make_scheduler
from batchllm_cli.engine.step import StepBatch
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import Request


@dataclass(frozen=True)
class SimulationResult:
    """What the schedule of a plan looks like, in steps and blocks."""

    steps: int
    peak_blocks: int  # most KV blocks held at once
    num_blocks: int  # pool size the simulation ran with
    prefill_tokens: int  # tokens computed by prefill items (shared prefixes counted once)
    decode_tokens: int
    tokens_per_step: tuple[int, ...]

    @property
    def mean_tokens_per_step(self) -> float:
        return (self.prefill_tokens + self.decode_tokens) / max(self.steps, 1)


def simulate(
    requests: Sequence[Request],
    groups: Sequence[PrefixGroup],
    *,
    num_blocks: int,
    block_size: int,
    token_budget: int,
    memory_bound: float,
    policy: str = "batchllm",
    max_running: int | None = None,
    ahead: int = 0,
    on_step: Callable[[StepBatch], None] | None = None,
) -> SimulationResult:
    """Runs the scheduler over `groups` (or a peer's `policy`, engine/caching.py) as if every
    request produced exactly max_tokens tokens; `on_step` sees each StepBatch (benchmarks count
    the KV and FLOPs of the steps a run will take; the warm-up lists their shapes).

    ahead: steps scheduled before the oldest one's tokens are applied, as the engine's loop does
    (engine.steps_ahead: 1 on CUDA), so that the dry run takes the steps the run will take."""
    pool = BlockPool(num_blocks)
    scheduler = make_scheduler(
        policy, requests, groups, pool, block_size=block_size, token_budget=token_budget, memory_bound=memory_bound,
        max_running=max_running,
    )
    tokens_per_step: list[int] = []
    prefill = decode = 0
    launched: deque[StepBatch] = deque()
    while scheduler.has_work:
        batch = scheduler.schedule()
        if batch:
            num_prefill = batch.num_prefill_tokens
            num_decode = batch.num_decode_tokens
            prefill += num_prefill
            decode += num_decode
            tokens_per_step.append(num_prefill + num_decode)
            if on_step is not None:
                on_step(batch)
            launched.append(batch)
        elif not launched:
            raise RuntimeError("scheduler made no progress: this is a bug")
        if len(launched) > (ahead if batch else 0):
            done = launched.popleft()
            scheduler.update(done, [0] * done.num_samples)
    return SimulationResult(
        steps=len(tokens_per_step),
        peak_blocks=pool.peak_used,
        num_blocks=num_blocks,
        prefill_tokens=prefill,
        decode_tokens=decode,
        tokens_per_step=tuple(tokens_per_step),
    )
