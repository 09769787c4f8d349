"""The peers' scheduling on our engine: FCFS admission over an LRU prefix cache (vLLM-like),
and longest-prefix-match admission over the same cache (SGLang-like).

They run the same model, kernels, token budget and step loop as BatchLLM's group scheduler and
differ only in what the paper changes: no global plan (requests come in file order), prefix KV
reused only while an LRU cache still holds it, and (vLLM) a cap on running requests. So a
benchmark of the three compares scheduling, not code bases.
- vllm-like: first come first served; at most `max_running` (vLLM's max_num_seqs, 256) running.
- sglang-like: when at most `lpm_window` (128) requests wait, the one with the longest cached
  prefix goes first (SGLang's longest-prefix-match policy; past 128 waiting it is FCFS, as SGLang
  falls back to); no request cap besides memory.
Like our scheduler, admission reserves a request's worst-case blocks (no preemption), and evicts
cached blocks when the free ones do not suffice.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Sequence

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.prefix_cache import PrefixCache
from batchllm_cli.engine.scheduler import Scheduler
from batchllm_cli.engine.state import GroupState, RequestState, blocks_for
from batchllm_cli.engine.step import StepItem
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import FinishReason, Request

VLLM_MAX_RUNNING = 256  # vLLM's default max_num_seqs
SGLANG_LPM_WINDOW = 128  # SGLang uses longest-prefix-match while the waiting queue is this short


class CachingScheduler(Scheduler):
    """A Scheduler whose requests are admitted one by one from the file order, reusing whatever
    full prompt blocks the prefix cache still holds."""

    def __init__(
        self,
        requests: Sequence[Request],
        pool: BlockPool,
        *,
        block_size: int,
        token_budget: int,
        memory_bound: float,
        policy: str,
    ) -> None:
        if policy not in ("vllm-like", "sglang-like"):
            raise ValueError(f"unknown caching policy {policy!r}")
        singles = [PrefixGroup(0, (r.index,)) for r in requests]  # no plan: every request alone
        super().__init__(requests, singles, pool, block_size=block_size, token_budget=token_budget,
                         memory_bound=memory_bound,
                         max_running=VLLM_MAX_RUNNING if policy == "vllm-like" else None)
        self.policy = policy
        self.cache = PrefixCache(pool, block_size)
        self._waiting: deque[int] = deque(r.index for r in requests)  # file order

    def _free_blocks(self) -> int:
        """Blocks admission may still take: unreserved ones, counting evictable cached ones."""
        return self.block_limit - (self.pool.num_used - self.cache.num_evictable)

    def _pick(self) -> int:
        """The waiting request to admit next (its position in the queue)."""
        if self.policy == "sglang-like" and len(self._waiting) <= SGLANG_LPM_WINDOW:
            matches = [self.cache.match(self.requests[i].prompt_ids) for i in self._waiting]
            return max(range(len(matches)), key=lambda k: (matches[k], -k))
        return 0

    def _admit_new(self, budget: int, items: list[StepItem], shared_id: Callable[[GroupState], int]) -> None:
        running = len(self._running)
        while budget > 0 and self._waiting:
            if self.max_running is not None and running >= self.max_running:
                return
            pos = self._pick()
            request = self.requests[self._waiting[pos]]
            hit = self.cache.match(request.prompt_ids)
            need = blocks_for(request.prompt_len + request.sampling.max_tokens - 1, self.block_size) - hit
            if need > self._free_blocks():
                return
            del self._waiting[pos]
            cached = self.cache.take(request.prompt_ids, hit)
            if need > self.pool.num_free:
                self.cache.evict(need - self.pool.num_free)
            state = RequestState(request=request, group=self.groups[request.index], own_blocks=cached + self.pool.allocate(need),
                                 computed=hit * self.block_size, cached_len=hit * self.block_size)
            running += 1
            budget -= self._start(state, budget, items, shared_id)

    def _prompt_stored(self, state: RequestState) -> None:
        self.cache.insert(state.request.prompt_ids, state.own_blocks)

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        blocks = state.own_blocks
        super()._finish(state, reason)
        self.cache.released(blocks)

    def live_block_lists(self) -> list[list[int]]:
        return super().live_block_lists() + self.cache.holders()


def make_scheduler(
    policy: str, requests: Sequence[Request], groups: Sequence[PrefixGroup], pool: BlockPool,
    max_running: int | None = None, **settings: object,
) -> Scheduler:
    """BatchLLM's group scheduler over the plan's groups (at most `max_running` admitted
    requests), or a peer's caching scheduler (their own caps)."""
    if policy == "batchllm":
        return Scheduler(requests, groups, pool, max_running=max_running, **settings)  # type: ignore[arg-type]
    return CachingScheduler(requests, pool, policy=policy, **settings)  # type: ignore[arg-type]
