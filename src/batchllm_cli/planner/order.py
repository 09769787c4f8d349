"""Group order: larger decode/prefill ratio first (PAPER.md idea 3, "reordering").

Groups that decode much for little prefill start first; the long prefills that come later are
chunked and mixed into the decode steps of the groups already running, so steps stay full. The
expected decode of a request is its max_tokens (offline jobs often end there; the scheduler
must reserve it anyway). Ties go to the group whose first request comes first in the input, so
the order is total and the plan deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batchllm_cli.planner.plan import PrefixGroup


def decode_prefill_ratio(
    group: PrefixGroup, prompt_lens: np.ndarray, max_tokens: np.ndarray
) -> float:
    """Expected output tokens per prefill token computed, for one group."""
    members = np.asarray(group.members, dtype=np.int64)
    prefill = group.prefix_len + int(prompt_lens[members].sum()) - group.prefix_len * len(members)
    return float(max_tokens[members].sum()) / max(prefill, 1)


def order_groups(
    groups: Sequence[PrefixGroup],
    prompt_lens: np.ndarray,  # [num_requests] int64
    max_tokens: np.ndarray,  # [num_requests] int64
) -> tuple[PrefixGroup, ...]:
    """`groups` sorted by decode/prefill ratio, descending; ties by smallest member index."""
    sizes = np.fromiter((len(g.members) for g in groups), dtype=np.int64, count=len(groups))
    members = np.fromiter(
        (m for g in groups for m in g.members), dtype=np.int64, count=int(sizes.sum())
    )
    prefixes = np.fromiter((g.prefix_len for g in groups), dtype=np.int64, count=len(groups))
    starts = np.zeros(len(groups), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    out_tokens = np.add.reduceat(max_tokens[members], starts) if len(groups) else starts
    prompt_tokens = np.add.reduceat(prompt_lens[members], starts) if len(groups) else starts
    prefill = prompt_tokens - prefixes * (sizes - 1)
    # exact float division: equal ratios give equal floats, so ties fall to the index key
    ratio = out_tokens / np.maximum(prefill, 1)
    first = np.fromiter((min(g.members) for g in groups), dtype=np.int64, count=len(groups))
    keys = np.lexsort((first, -ratio))
    return tuple(groups[i] for i in keys.tolist())
