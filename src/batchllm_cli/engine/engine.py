"""The step loop: schedule, launch, apply (one step ahead on CUDA); finished requests come out as
Completions at once."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.caching import make_scheduler
from batchllm_cli.engine.runner import ModelRunner, StepOutput
from batchllm_cli.engine.sampler import SampleRow
from batchllm_cli.engine.scheduler import Scheduler
from batchllm_cli.engine.state import RequestState, Status
from batchllm_cli.engine.step import StepBatch
from batchllm_cli.engine.stop import StopChecker
from batchllm_cli.planner.plan import Plan
from batchllm_cli.types import Completion, Request


@dataclass(frozen=True)
class EngineProgress:
    """Where a run stands, handed to `on_progress` after every step."""

    requests_done: int
    requests_total: int
    prompt_tokens: int  # logical prompt tokens of the requests whose prefill is complete
    prefill_tokens: int  # prompt tokens actually computed so far (shared prefixes once)
    output_tokens: int
    steps: int
    elapsed_s: float
    prefix_tokens_saved: int = 0  # prompt tokens of completed prefills whose KV was shared (never decreases)
    kv_blocks_used: int = 0  # KV blocks reserved right now
    model_tokens: int = 0  # tokens run through the model so far (prefill and decode)


ProgressFn = Callable[[EngineProgress], None]


@dataclass
class _Launched:
    """A step on the device: its batch, the requests that sample in it, its output."""

    batch: StepBatch
    sampling: list[RequestState]
    output: StepOutput


class Engine:
    """One job on one model runner: the scheduler over its plan and the steps on the device.

    On CUDA it runs one step ahead: step N+1 is scheduled and launched while step N runs, and
    N's tokens are applied after (its decodes read N's tokens on the device). Worst-case KV
    reservation means no allocation waits for a token. A request that stopped at N (EOS, stop
    string) is in N+1 once more; that token is dropped. Penalties count the drawn tokens on the
    device (logits.PenaltyState), so jobs with penalties run one step ahead too.
    """

    def __init__(self, runner: ModelRunner, requests: Sequence[Request], plan: Plan, stop: StopChecker, *,
                 token_budget: int, memory_bound: float, policy: str = "batchllm",
                 max_running: int | None = None) -> None:
        self.runner = runner
        self.stop = stop
        self.scheduler = make_scheduler(
            policy, requests, plan.groups, BlockPool(runner.num_blocks), block_size=runner.config.block_size,
            token_budget=token_budget, memory_bound=memory_bound, max_running=max_running,
        )
        self.ahead = steps_ahead(runner)
        runner.sampler.reset()
        runner.block_tables.reset()
        self.tally = _Tally(time.perf_counter(), len(requests))
        self._launched: deque[_Launched] = deque()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> list[Completion] | None:
        """Schedules and launches the next step; then, once more than `ahead` steps are on the
        device, applies the oldest one and returns the requests it finished (None: none applied)."""
        batch = self.scheduler.schedule()
        if batch:
            self._launched.append(self._launch(batch))
        elif not self._launched:
            raise RuntimeError("the scheduler made no progress: this is a bug in batchllm")
        if len(self._launched) <= (self.ahead if batch else 0):
            return None
        finished = _apply(self.scheduler, self._launched.popleft(), self.stop, self.tally)
        for state in finished:
            group = state.group
            prefix_ended = group.position if group.prefix_len and not group.members_left else None
            self.runner.finished(state.index, prefix_ended, state.sample_row_cache)
        return [_completion(state, self.stop) for state in finished]

    def progress(self) -> EngineProgress:
        return self.tally.progress(self.scheduler)

    def _launch(self, batch: StepBatch) -> _Launched:
        sampling = self.scheduler.sampling_states(batch)
        rows = [_sample_row(s, p) for s, p in zip(sampling, self.scheduler.output_positions(batch).tolist())]
        prev = self._launched[-1].output if self._launched else None
        return _Launched(batch, sampling, self.runner.launch(batch, rows, prev))


def steps_ahead(runner: ModelRunner) -> int:
    """Launched steps whose tokens may still be on their way: one where the runner overlaps
    (CUDA), none on the CPU. (Penalties count the tokens drawn so far on the device, so they
    need no host copy of the previous step's tokens.)"""
    return 1 if runner.overlaps else 0


def run_plan(
    runner: ModelRunner,
    requests: Sequence[Request],
    plan: Plan,
    stop: StopChecker,
    *,
    token_budget: int,
    memory_bound: float,
    on_progress: ProgressFn | None = None,
    policy: str = "batchllm",
    max_running: int | None = None,
) -> Iterator[Completion]:
    """Executes `plan` on `runner`, yielding each request's Completion as soon as it finishes.

    policy: "batchllm" runs the plan's groups; "vllm-like" / "sglang-like" ignore them and run
    the requests in order over an LRU prefix cache (engine/caching.py), for comparisons."""
    engine = Engine(runner, requests, plan, stop, token_budget=token_budget, memory_bound=memory_bound,
                    policy=policy, max_running=max_running)
    while engine.has_work:
        finished = engine.step()
        if finished is None:
            continue
        yield from finished
        if on_progress is not None:
            on_progress(engine.progress())


def _sample_row(state: RequestState, position: int) -> SampleRow:
    """The state's SampleRow at the output position of the token drawn now. One row per
    request, kept on its state: the sampler reads it during launch, so the next step may move
    its position."""
    row = state.sample_row_cache
    if row is None:
        r = state.request
        row = state.sample_row_cache = SampleRow(r.sampling, r.index, 0, r.prompt_ids, state.output_ids)
    row.position = position
    return row


@dataclass
class _Tally:
    """Running totals for EngineProgress."""

    start: float
    requests_total: int
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    output_tokens: int = 0
    saved: int = 0
    model_tokens: int = 0

    def progress(self, scheduler: Scheduler) -> EngineProgress:
        return EngineProgress(
            requests_done=scheduler.num_finished,
            requests_total=self.requests_total,
            prompt_tokens=self.prompt_tokens,
            prefill_tokens=self.prefill_tokens,
            output_tokens=self.output_tokens,
            steps=scheduler.step_count,
            elapsed_s=time.perf_counter() - self.start,
            prefix_tokens_saved=self.saved,
            kv_blocks_used=scheduler.pool.num_used,
            model_tokens=self.model_tokens,
        )


def _apply(scheduler: Scheduler, done: _Launched, stop: StopChecker, tally: _Tally) -> list[RequestState]:
    """Applies a step's tokens (waiting for them) and counts what it did."""
    tokens = done.output.token_ids()
    if done.output.has_logprobs:
        for state, logprob in zip(done.sampling, done.output.logprobs()):
            # a request that finished after this step was issued gets no token from it
            if logprob is not None and state.status is not Status.FINISHED:
                state.logprobs.append(logprob)
    finished = scheduler.update(done.batch, tokens, stop)
    tally.prefill_tokens += done.batch.num_prefill_tokens
    tally.model_tokens += done.batch.num_tokens
    tally.output_tokens = scheduler.num_output_tokens
    for s in scheduler.prompts_done:  # prompts completed by this step
        tally.prompt_tokens += s.request.prompt_len
        tally.saved += s.group.prefix_len + s.cached_len
        if s.group.prefix_len and not s.group.prefix_paid:
            s.group.prefix_paid = True  # the first member to complete its prompt computed the prefix
            tally.saved -= s.group.prefix_len
    return finished


def _completion(state: RequestState, stop: StopChecker) -> Completion:
    assert state.status is Status.FINISHED and state.finish_reason is not None
    r = state.request
    return Completion(
        index=r.index,
        id=r.id,
        text=stop.final_text(state),
        token_ids=tuple(state.output_ids),
        finish_reason=state.finish_reason,
        prompt_tokens=r.prompt_len,
        shared_prefix_tokens=state.group.prefix_len + state.cached_len,
        logprobs=stop.with_token_texts(state.logprobs) if r.sampling.logprobs is not None else None,
    )
