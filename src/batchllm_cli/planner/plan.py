"""The Plan: prefix-sharing groups in execution order, serializable and deterministic.

Invariants the engine relies on (the planner guarantees them, `Plan.validate` checks them):
- every request index of the job appears in exactly one group;
- all members of a group share their first `prefix_len` prompt tokens;
- `prefix_len < len(prompt)` for every member: each member keeps at least one distinct token,
  whose logits give its first output token;
- a group of one member has `prefix_len == 0` (a plain request).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrefixGroup:
    """Requests computed on one shared prefix: `prefix_len` tokens, prefilled once."""

    prefix_len: int
    members: tuple[int, ...]  # request indices, in execution order
