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
from typing import Sequence

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.engine.prefix_cache import PrefixCache, PromptHashes
from batchllm_cli.engine.scheduler import Scheduler, StepDraft
from batchllm_cli.engine.state import RequestState, blocks_for
from batchllm_cli.planner.plan import PrefixGroup
from batchllm_cli.types import Request

VLLM_MAX_RUNNING = 256  # vLLM's default max_num_seqs
SGLANG_LPM_WINDOW = 128  # SGLang uses longest-prefix-match while the waiting queue is this short


class CachingAdmission:
    """The Admission of the peers' policies (engine/scheduler.py's protocol): requests one by
    one from the file order, reusing whatever full prompt blocks the prefix cache still holds."""

    def __init__(self, scheduler: Scheduler, policy: str) -> None:
        if policy not in ("vllm-like", "sglang-like"):
            raise ValueError(f"unknown caching policy {policy!r}")
        self.s = scheduler
        self.policy = policy
        self.cache = PrefixCache(scheduler.pool, scheduler.block_size)
        self._hashes: dict[int, PromptHashes] = {}  # by request index, from its first lookup to its insert
        self._waiting: deque[int] = deque(r.index for r in scheduler.requests)  # file order

    def _free_blocks(self) -> int:
        """Blocks admission may still take: unreserved ones, counting evictable cached ones."""
        s = self.s
        return s.block_limit - (s.pool.num_used - self.cache.num_evictable)

    def _pick(self) -> int:
        """The waiting request to admit next (its position in the queue)."""
        if self.policy == "sglang-like" and len(self._waiting) <= SGLANG_LPM_WINDOW:
            matches = [self.cache.match(self._hashes_of(i)) for i in self._waiting]
            return max(range(len(matches)), key=lambda k: (matches[k], -k))
        return 0

    def admit(self, budget: int, draft: StepDraft) -> None:
        s = self.s
        while budget > 0 and self._waiting and not s.at_request_cap:
            pos = self._pick()
            request = s.requests[self._waiting[pos]]
            hashes = self._hashes_of(request.index)
            hit = self.cache.match(hashes)
            need = blocks_for(request.prompt_len + request.sampling.max_tokens - 1, s.block_size) - hit
            # the cached blocks it takes stop being evictable: they cannot make room for `need`
            if need + self.cache.num_evictable_in(hashes, hit) > self._free_blocks():
                return
            del self._waiting[pos]
            cached = self.cache.take(hashes, hit)
            if need > s.pool.num_free:
                self.cache.evict(need - s.pool.num_free)
            state = RequestState(request=request, group=s.groups[request.index], own_blocks=cached + s.pool.allocate(need),
                                 computed=hit * s.block_size, cached_len=hit * s.block_size)
            budget -= s.start(state, budget, draft)

    def _hashes_of(self, index: int) -> PromptHashes:
        hashes = self._hashes.get(index)
        if hashes is None:
            hashes = self._hashes[index] = self.cache.hashes(self.s.requests[index].prompt_ids)
        return hashes

    def num_reserved(self) -> int:
        return 0  # a request starts when it is admitted

    def prompt_stored(self, state: RequestState) -> None:
        self.cache.insert(self._hashes.pop(state.index), state.own_blocks)

    def released(self, state: RequestState, blocks: list[int]) -> None:
        self.cache.released(blocks)

    def held_blocks(self) -> list[list[int]]:
        return self.cache.holders()


def caching_scheduler(
    requests: Sequence[Request], pool: BlockPool, *, policy: str, **settings: object
) -> Scheduler:
    """A peer's policy on our scheduler: no plan (every request a group of its own, in file
    order), CachingAdmission over an LRU prefix cache, and vLLM's request cap for vllm-like."""
    singles = [PrefixGroup(0, (r.index,)) for r in requests]
    cap = VLLM_MAX_RUNNING if policy == "vllm-like" else None
    return Scheduler(requests, singles, pool, max_running=cap,  # type: ignore[arg-type]
                     admission=lambda s: CachingAdmission(s, policy), **settings)


def make_scheduler(
    policy: str, requests: Sequence[Request], groups: Sequence[PrefixGroup], pool: BlockPool,
    max_running: int | None = None, **settings: object,
) -> Scheduler:
    """BatchLLM's group scheduler over the plan's groups (at most `max_running` admitted
    requests), or a peer's caching scheduler (their own caps)."""
    if policy == "batchllm":
        return Scheduler(requests, groups, pool, max_running=max_running, **settings)  # type: ignore[arg-type]
    return caching_scheduler(requests, pool, policy=policy, **settings)
