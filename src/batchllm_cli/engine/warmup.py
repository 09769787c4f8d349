"""Start-up warm-up: before a job's first step, compile and capture what its steps will need.

A dry run of the job's schedule (engine/simulate.py: the same scheduler, no model) lists the
steps the job will take. A decode-only step that a CUDA graph holds names its graph key
(cuda_graphs.graph_key); each key is captured once, here. Any other step of up to
`mixed_graph_tokens` tokens replays the piecewise graphs of its padded token count
(engine/mixed_graphs.py), each count captured here too; its attention still runs eagerly, and,
as in a step run wholly eagerly, its Triton kernels compile one variant per specialization of
the step's counts (ModelRunner.eager_specialization); the first dry-run step of each
specialization the runner has not run yet is run once, here, so that its variants compile
before the job starts.

Those steps write K/V into blocks of the pool that no request holds yet (the dry run's pool has
the job's size, and a job starts with nothing stored), and their tokens are dropped. Requests that
stop early (EOS, stop strings) take other steps than the dry run; a key or specialization first
seen during the job is still captured or compiled then, and the bench counts how often.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from batchllm_cli.engine.engine import steps_ahead
from batchllm_cli.engine.sampler import SampleRow
from batchllm_cli.engine.simulate import simulate
from batchllm_cli.engine.step import StepBatch
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import Request

if TYPE_CHECKING:
    from batchllm_cli.engine.runner import ModelRunner


@dataclass(frozen=True)
class WarmupReport:
    """What a start-up warm-up did."""

    seconds: float
    steps: int  # steps of the dry run
    graph_keys: int  # distinct CUDA graph keys the steps need
    graphs_captured: int  # of those, captured now (the others were captured before)
    mixed_sizes: int  # distinct token counts of piecewise graphs (engine/mixed_graphs.py) the steps need
    mixed_captured: int  # of those, captured now
    specializations: int  # distinct specializations of the eager steps
    eager_steps_run: int  # of those, run now to compile their kernels

    def describe(self) -> str:
        return (f"warm-up {self.seconds:.1f} s: {self.graphs_captured} of {self.graph_keys} decode graphs and "
                f"{self.mixed_captured} of {self.mixed_sizes} mixed-step graph sizes captured, "
                f"{self.eager_steps_run} of {self.specializations} eager attention shapes compiled")


@dataclass
class StepShapes:
    """The graph keys (with their step counts) and one step per eager specialization of a
    schedule, collected step by step (an `on_step` observer of engine.simulate)."""

    runner: ModelRunner
    steps: int = 0

    def __post_init__(self) -> None:
        self.graph_keys: Counter[tuple[int, int, int]] = Counter()
        self.mixed_sizes: Counter[int] = Counter()
        self.eager: dict[tuple[int, ...], StepBatch] = {}

    def __call__(self, batch: StepBatch) -> None:
        self.steps += 1
        layout = self.runner.host_layout(batch)
        key = self.runner.graph_key(batch, layout)
        if key is not None:
            self.graph_keys[key] += 1
            return
        size = self.runner.mixed_size(layout)
        if size is not None:
            self.mixed_sizes[size] += 1
        self.eager.setdefault(self.runner.eager_specialization(layout), batch)


def step_shapes(runner: ModelRunner, requests: Sequence[Request], groups: Sequence[PrefixGroup], *,
                token_budget: int, memory_bound: float, policy: str, max_running: int | None) -> StepShapes:
    """The graph keys and eager step shapes of a dry run of the job's schedule."""
    shapes = StepShapes(runner)
    simulate(requests, groups, num_blocks=runner.num_blocks, block_size=runner.config.block_size,
             token_budget=token_budget, memory_bound=memory_bound, policy=policy, max_running=max_running,
             ahead=steps_ahead(runner), on_step=shapes)  # fmt: skip
    return shapes


def warm_up(runner: ModelRunner, requests: Sequence[Request], groups: Sequence[PrefixGroup], *,
            token_budget: int, memory_bound: float, policy: str = "batchllm",
            max_running: int | None = None) -> WarmupReport:
    """Captures the job's CUDA graphs and compiles its eager steps' kernels (module docstring)."""
    start = time.perf_counter()
    shapes = step_shapes(runner, requests, groups, token_budget=token_budget, memory_bound=memory_bound,
                         policy=policy, max_running=max_running)
    captured, mixed = runner.capture([key for key, _ in shapes.graph_keys.most_common()],
                                     sorted(shapes.mixed_sizes, reverse=True))
    new = [(spec, batch) for spec, batch in shapes.eager.items() if spec not in runner.warm_specializations]
    for spec, batch in new:
        rows = [_row(requests[i]) for i in batch.sample_requests()]
        runner.launch(_unfed(batch), rows).token_ids()  # waits: the variants are compiled when it returns
        for row in rows:
            runner.sampler.release(row)
        runner.warm_specializations.add(spec)
    return WarmupReport(time.perf_counter() - start, shapes.steps, len(shapes.graph_keys), captured,
                        len(shapes.mixed_sizes), mixed, len(shapes.eager), len(new))


def _unfed(batch: StepBatch) -> StepBatch:
    """`batch` with its decodes reading their (placeholder) token from the host instead of from
    the step before, which a warm-up step does not have."""
    return replace(batch, decodes=batch.decodes.unfed())


def _row(request: Request) -> SampleRow:
    return SampleRow(request.sampling, request.index, 0, request.prompt_ids, ())
