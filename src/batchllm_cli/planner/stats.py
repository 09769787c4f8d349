"""What a plan buys: sharing degrees, prefill tokens saved, and the KV memory it will need."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from batchllm_cli.planner.plan import PlanSettings, PrefixGroup

TOP_GROUPS = 10  # groups listed in the report
MEMBER_PREVIEW = 8  # member indices kept per listed group (the CLI decodes the first)


def round6(x: float) -> float:
    """Rounded so that the JSON of a plan does not depend on float noise."""
    return round(float(x), 6)


@dataclass(frozen=True)
class LengthSummary:
    """min / mean / max of a set of token lengths (all 0 for an empty set)."""

    min: int = 0
    mean: float = 0.0
    max: int = 0

    @classmethod
    def of(cls, lengths: np.ndarray) -> LengthSummary:
        if lengths.size == 0:
            return cls()
        return cls(int(lengths.min()), round6(lengths.mean()), int(lengths.max()))


@dataclass(frozen=True)
class TopGroup:
    """One of the groups that save the most prefill tokens."""

    position: int  # index in Plan.groups
    prefix_len: int
    num_members: int
    tokens_saved: int  # (num_members - 1) * prefix_len
    members: tuple[int, ...]  # the first MEMBER_PREVIEW request indices


@dataclass(frozen=True)
class PlanStats:
    """The planner's report; the CLI renders it, the JSON plan carries it."""

    num_requests: int = 0
    num_groups: int = 0
    num_shared_groups: int = 0  # groups of two or more requests
    shared_requests: int = 0  # requests in those groups
    degree_histogram: tuple[tuple[int, int], ...] = ()  # (members per group, number of groups)
    prefix_len: LengthSummary = field(default_factory=LengthSummary)  # over shared groups
    distinct_len: LengthSummary = field(default_factory=LengthSummary)  # over requests
    logical_prefill_tokens: int = 0  # sum of prompt lengths
    processed_prefill_tokens: int = 0  # each prefix once + every distinct part
    saving_ratio: float = 0.0  # 1 - processed / logical
    top_groups: tuple[TopGroup, ...] = ()
    est_peak_kv_blocks: int = 0  # see estimate_peak_kv_blocks
    kv_bound_blocks: int = 0  # floor(num_kv_blocks * memory_bound)
    # the same input through a vLLM-style LRU prefix cache of the same size, in file order
    lru_processed_prefill_tokens: int | None = None
    lru_saving_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["degree_histogram"] = [list(p) for p in self.degree_histogram]
        d["top_groups"] = [{**asdict(t), "members": list(t.members)} for t in self.top_groups]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanStats:
        d = dict(d)
        d["degree_histogram"] = tuple((int(a), int(b)) for a, b in d["degree_histogram"])
        d["prefix_len"] = LengthSummary(**d["prefix_len"])
        d["distinct_len"] = LengthSummary(**d["distinct_len"])
        d["top_groups"] = tuple(
            TopGroup(**{**t, "members": tuple(t["members"])}) for t in d["top_groups"]
        )
        return cls(**d)


def estimate_peak_kv_blocks(
    groups: Sequence[PrefixGroup],
    prompt_lens: np.ndarray,
    max_tokens: np.ndarray,
    block_size: int,
    bound_blocks: int,
) -> int:
    """The most KV blocks the plan holds at once under worst-case admission.

    Model: requests are admitted in plan order, each reserving its own segment (distinct part
    plus max_tokens, from a fresh block) and, for a group's first admitted member, the prefix
    blocks. When the next request does not fit under `bound_blocks`, the earliest admitted
    request finishes first (outputs of equal length end in admission order) and a prefix is
    freed with its group's last member. A request larger than the bound alone still counts, so
    a result above `bound_blocks` means the plan cannot run in this pool.
    """
    running: deque[tuple[int, int, int]] = deque()  # (group position, own blocks, prefix blocks)
    left_in_group: dict[int, int] = {}
    held = peak = 0
    for pos, g in enumerate(groups):
        prefix_blocks = -(-g.prefix_len // block_size)
        left_in_group[pos] = len(g.members)
        for k, m in enumerate(g.members):
            own = -(-(int(prompt_lens[m]) - g.prefix_len + int(max_tokens[m])) // block_size)
            need = own + (prefix_blocks if k == 0 else 0)
            while running and held + need > bound_blocks:
                gpos, o, p = running.popleft()
                held -= o
                left_in_group[gpos] -= 1
                if left_in_group[gpos] == 0:
                    held -= p
            held += need
            running.append((pos, own, prefix_blocks))
            peak = max(peak, held)
    return peak


def compute_stats(
    groups: Sequence[PrefixGroup],
    prompt_lens: np.ndarray,  # [num_requests] int64
    max_tokens: np.ndarray,  # [num_requests] int64
    settings: PlanSettings,
) -> PlanStats:
    """The report of a plan, without the LRU comparison (build_plan adds that)."""
    n = int(prompt_lens.shape[0])
    sizes = np.fromiter((len(g.members) for g in groups), dtype=np.int64, count=len(groups))
    prefixes = np.fromiter((g.prefix_len for g in groups), dtype=np.int64, count=len(groups))
    member_prefix = np.repeat(prefixes, sizes)
    order = np.fromiter((m for g in groups for m in g.members), dtype=np.int64, count=n)
    distinct = prompt_lens[order] - member_prefix
    logical = int(prompt_lens.sum())
    processed = int(prefixes.sum() + distinct.sum())
    shared = sizes > 1
    degrees, counts = np.unique(sizes, return_counts=True)
    saved = (sizes - 1) * prefixes
    top = [int(i) for i in np.argsort(-saved, kind="stable")[:TOP_GROUPS] if saved[i] > 0]
    bound = int(settings.num_kv_blocks * settings.memory_bound)
    return PlanStats(
        num_requests=n,
        num_groups=len(groups),
        num_shared_groups=int(shared.sum()),
        shared_requests=int(sizes[shared].sum()),
        degree_histogram=tuple((int(d), int(c)) for d, c in zip(degrees, counts)),
        prefix_len=LengthSummary.of(prefixes[shared]),
        distinct_len=LengthSummary.of(distinct),
        logical_prefill_tokens=logical,
        processed_prefill_tokens=processed,
        saving_ratio=round6(1 - processed / logical) if logical else 0.0,
        top_groups=tuple(
            TopGroup(
                position=i,
                prefix_len=int(prefixes[i]),
                num_members=int(sizes[i]),
                tokens_saved=int(saved[i]),
                members=tuple(groups[i].members[:MEMBER_PREVIEW]),
            )
            for i in top
        ),
        est_peak_kv_blocks=estimate_peak_kv_blocks(
            groups, prompt_lens, max_tokens, settings.block_size, bound
        ),
        kv_bound_blocks=bound,
    )
