"""The step loop: schedule, run, apply; finished requests come out as Completions at once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.runner import ModelRunner
from batchllm_cli.engine.caching import make_scheduler
from batchllm_cli.engine.state import RequestState, Status
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

    @property
    def prefix_tokens_saved(self) -> int:
        """Prompt tokens whose KV came from a shared prefix instead of being computed again."""
        return max(0, self.prompt_tokens - self.prefill_tokens)


ProgressFn = Callable[[EngineProgress], None]


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
) -> Iterator[Completion]:
    """Executes `plan` on `runner`, yielding each request's Completion as soon as it finishes.

    policy: "batchllm" runs the plan's groups; "vllm-like" / "sglang-like" ignore them and run
    the requests in order over an LRU prefix cache (engine/caching.py), for comparisons."""
    pool = BlockPool(runner.num_blocks)
    scheduler = make_scheduler(
        policy,
        requests,
        plan.groups,
        pool,
        block_size=runner.config.block_size,
        token_budget=token_budget,
        memory_bound=memory_bound,
    )
    start = time.perf_counter()
    prompt_tokens = prefill_tokens = output_tokens = 0
    while scheduler.has_work:
        batch = scheduler.schedule()
        if not batch.items:
            raise RuntimeError("the scheduler made no progress: this is a bug in batchllm")
        states = scheduler.active_states()
        sampling = [states[batch.items[i].request] for i in batch.sample_items]
        tokens, logprobs = runner.execute(batch, requests, [s.output_ids for s in sampling])
        for state, logprob in zip(sampling, logprobs):
            if logprob is not None:
                state.logprobs.append(logprob)
        finished = scheduler.update(batch, tokens, stop)
        prefill_tokens += batch.num_prefill_tokens
        output_tokens += len(tokens)
        prompt_tokens += sum(s.request.prompt_len for s in sampling if s.num_output == 1)
        for state in finished:
            yield _completion(state, stop)
        if on_progress is not None:
            on_progress(
                EngineProgress(
                    requests_done=scheduler.num_finished,
                    requests_total=len(requests),
                    prompt_tokens=prompt_tokens,
                    prefill_tokens=prefill_tokens,
                    output_tokens=output_tokens,
                    steps=scheduler.step_count,
                    elapsed_s=time.perf_counter() - start,
                )
            )


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
