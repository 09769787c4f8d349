"""The Plan: prefix-sharing groups in execution order, serializable and deterministic.

Invariants the engine relies on (the planner guarantees them, `Plan.validate` checks them):
- every request index of the job appears in exactly one group;
- all members of a group share their first `prefix_len` prompt tokens;
- `prefix_len < len(prompt)` for every member: each member keeps at least one distinct token,
  whose logits give its first output token;
- a group of one member has `prefix_len == 0` (a plain request).
An empty prompt can only be a plain request (the planner never shares from it); whether it can
run at all is the engine's call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from batchllm_cli.errors import PlanError
from batchllm_cli.planner.stats import PlanStats

if TYPE_CHECKING:
    from batchllm_cli.engine.config import EngineConfig
    from batchllm_cli.types import Request

PLAN_VERSION = 1


@dataclass(frozen=True)
class PrefixGroup:
    """Requests computed on one shared prefix: `prefix_len` tokens, prefilled once."""

    prefix_len: int
    members: tuple[int, ...]  # request indices, in execution order


@dataclass(frozen=True)
class PlanSettings:
    """The engine settings the planner reads; only the first two change the groups and order."""

    prefix_sharing: bool = True
    min_prefix_tokens: int = 16
    block_size: int = 16
    token_budget: int = 256
    num_kv_blocks: int = 4096  # KV pool size in blocks, for the memory estimates
    memory_bound: float = 0.95

    @classmethod
    def from_engine(cls, config: EngineConfig, num_kv_blocks: int) -> PlanSettings:
        """The planner's view of an engine config whose KV pool holds `num_kv_blocks` blocks."""
        return cls(
            prefix_sharing=config.prefix_sharing,
            min_prefix_tokens=config.min_prefix_tokens,
            block_size=config.block_size,
            token_budget=config.token_budget,
            num_kv_blocks=int(num_kv_blocks),
            memory_bound=config.memory_bound,
        )

    def shaping_key(self) -> bytes:
        """The settings that decide groups and their order, as bytes for the fingerprint."""
        return f"sharing={int(self.prefix_sharing)};min_prefix={self.min_prefix_tokens}".encode()


def input_fingerprint(requests: Sequence[Request], settings: PlanSettings) -> str:
    """A hash of the tokenized input (ids and max_tokens, in order) and the shaping settings."""
    h = hashlib.sha256()
    h.update(f"batchllm-plan-v{PLAN_VERSION};n={len(requests)};".encode())
    h.update(settings.shaping_key())
    # lengths and max_tokens first, so that different splits of the same ids cannot collide
    shape = np.array([(r.prompt_len, r.sampling.max_tokens) for r in requests], dtype="<i8")
    h.update(shape.tobytes())
    for r in requests:
        h.update(np.ascontiguousarray(r.prompt_ids, dtype="<i4"))  # no copy for int32 ids
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """Groups in execution order, with the fingerprint of the input and settings that made them."""

    version: int
    fingerprint: str
    groups: tuple[PrefixGroup, ...]
    settings: PlanSettings
    stats: PlanStats

    @property
    def num_requests(self) -> int:
        return sum(len(g.members) for g in self.groups)

    def to_json(self) -> bytes:
        """The plan as canonical JSON bytes (sorted keys): the same plan gives the same bytes."""
        doc: dict[str, Any] = {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "settings": asdict(self.settings),
            "stats": self.stats.to_dict(),
            "groups": [[g.prefix_len, list(g.members)] for g in self.groups],
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        """Reads what `to_json` wrote; raises PlanError when it is not a plan of this version."""
        try:
            doc = orjson.loads(data)
            version = int(doc["version"])
            if version != PLAN_VERSION:
                raise PlanError(
                    f"the plan file has version {version}, this batchllm reads version "
                    f"{PLAN_VERSION}: make the plan again with `batchllm plan`"
                )
            groups = tuple(
                PrefixGroup(int(p), tuple(int(m) for m in ms)) for p, ms in doc["groups"]
            )
            return cls(
                version=version,
                fingerprint=str(doc["fingerprint"]),
                groups=groups,
                settings=PlanSettings(**doc["settings"]),
                stats=PlanStats.from_dict(doc["stats"]),
            )
        except PlanError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise PlanError(
                f"not a batchllm plan file ({exc}): make it with `batchllm plan --json FILE`"
            ) from exc

    def restrict(self, requests: Sequence[Request], keep: Sequence[bool]) -> tuple[list[Request], "Plan"]:
        """The requests with keep[index] (re-indexed 0..m-1, in order) and this plan cut down to
        them, group order kept; a group left with one member shares nothing."""
        flags = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(flags, dtype=np.int64) - 1
        groups = []
        for g in self.groups:
            members = tuple(int(new_index[m]) for m in g.members if flags[m])
            if members:
                groups.append(PrefixGroup(g.prefix_len if len(members) > 1 else 0, members))
        kept = [replace(r, index=int(new_index[r.index])) for r in requests if flags[r.index]]
        sub = Plan(self.version, input_fingerprint(kept, self.settings), tuple(groups), self.settings, self.stats)
        return kept, sub

    def validate(self, requests: Sequence[Request], settings: PlanSettings | None = None) -> None:
        """Raises PlanError unless this plan belongs to `requests` (and `settings`, when given)."""
        if settings is not None and settings.shaping_key() != self.settings.shaping_key():
            raise PlanError(
                "the plan was made with other prefix settings "
                f"({self.settings.shaping_key().decode()} vs {settings.shaping_key().decode()}): "
                "make the plan again with the same options as the run"
            )
        if input_fingerprint(requests, self.settings) != self.fingerprint:
            raise PlanError(
                "the plan does not belong to this input (its fingerprint differs: the prompts, "
                "their order, max_tokens or the tokenizer changed): make the plan again"
            )
        check_groups(self.groups, requests)


def check_groups(groups: Sequence[PrefixGroup], requests: Sequence[Request]) -> None:
    """Raises PlanError when `groups` break an invariant of the module docstring."""
    seen = np.zeros(len(requests), dtype=bool)
    for pos, g in enumerate(groups):
        if not g.members:
            raise PlanError(f"plan group {pos} has no members: the plan file is damaged")
        if len(g.members) == 1 and g.prefix_len != 0:
            raise PlanError(f"plan group {pos} has one member but a shared prefix: damaged plan")
        if g.prefix_len < 0:
            raise PlanError(f"plan group {pos} has a negative prefix length: damaged plan")
        first = None
        for m in g.members:
            if not 0 <= m < len(requests):
                raise PlanError(
                    f"plan group {pos} names request {m}, the input has {len(requests)}"
                )
            if seen[m]:
                raise PlanError(f"request {m} is in more than one plan group: damaged plan")
            seen[m] = True
            ids = requests[m].prompt_ids
            if g.prefix_len and g.prefix_len >= ids.shape[0]:
                raise PlanError(
                    f"plan group {pos}: request {m} has {ids.shape[0]} prompt tokens, not more "
                    f"than the group prefix of {g.prefix_len}: damaged plan"
                )
            if first is None:
                first = ids[: g.prefix_len]
            elif not np.array_equal(first, ids[: g.prefix_len]):
                raise PlanError(f"plan group {pos}: request {m} does not share the group prefix")
    if not seen.all():
        missing = int(np.argmin(seen))
        raise PlanError(f"request {missing} is in no plan group: the plan file is damaged")
