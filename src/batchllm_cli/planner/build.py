"""build_plan: tokenized requests and settings in, a deterministic Plan out."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from batchllm_cli.errors import PlanError
from batchllm_cli.planner.plan import PLAN_VERSION, Plan, PlanSettings, PrefixGroup, input_fingerprint
from batchllm_cli.planner.stats import compute_stats
from batchllm_cli.types import Request


def build_plan(requests: Sequence[Request], settings: PlanSettings) -> Plan:
    """The plan of a job: prefix-sharing groups in execution order, with their report."""
    for pos, r in enumerate(requests):
        if r.index != pos:
            raise PlanError(f"requests[{pos}] has index {r.index}: indices must be 0..n-1 in order")
    prompt_lens = np.fromiter((r.prompt_len for r in requests), dtype=np.int64, count=len(requests))
    max_tokens = np.fromiter(
        (r.sampling.max_tokens for r in requests), dtype=np.int64, count=len(requests)
    )
    groups = tuple(PrefixGroup(0, (i,)) for i in range(len(requests)))
    return Plan(
        version=PLAN_VERSION,
        fingerprint=input_fingerprint(requests, settings),
        groups=groups,
        settings=settings,
        stats=compute_stats(groups, prompt_lens, max_tokens, settings),
    )
