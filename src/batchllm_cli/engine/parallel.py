"""Data parallelism: one engine per device, the plan's groups shared out between them.

Groups are independent (DESIGN.md, "Scale beyond one GPU"), so a job splits along them: each
group goes whole to one device, the biggest first to the least loaded (estimated work: prefill
tokens computed plus tokens to generate), and each device runs its groups in the plan's order.
Every device gets a process of its own (spawned: CUDA cannot be forked) that loads the model and
streams its Completions back; the parent writes them as they come. A worker's failure stops the
job with that worker's error. Sampling seeds belong to the requests, so results do not depend on
how the job was split.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import signal
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from batchllm_cli import errors
from batchllm_cli.engine.config import EngineConfig, check_device
from batchllm_cli.engine.engine import EngineProgress, ProgressFn
from batchllm_cli.errors import BatchLLMError, ConfigError
from batchllm_cli.planner.plan import Plan
from batchllm_cli.types import Completion, Request

POLL_S = 1.0  # how often the parent looks at its workers while none reports


@dataclass(frozen=True)
class Shard:
    """One device's part of the job: its requests (re-indexed 0..m-1) and their plan."""

    device: str
    requests: list[Request]
    plan: Plan
    job_index: np.ndarray  # [m] the job index of each of the shard's requests
    work: int  # estimated tokens of work


def parse_devices(spec: str) -> list[str]:
    """`cuda:0,cuda:1` -> ["cuda:0", "cuda:1"]; one name stays one device."""
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices:
        raise ConfigError(f"no device in {spec!r}")
    if len(set(devices)) != len(devices) and not all(d == "cpu" for d in devices):
        raise ConfigError(f"a GPU is named twice in {spec!r}: give each device once")
    for d in devices:
        check_device(d)
    return devices


def group_work(requests: Sequence[Request], prefix_len: int, members: Sequence[int]) -> int:
    """Tokens a group costs: its prefix once, each member's own part and its max_tokens."""
    return prefix_len + sum(requests[m].prompt_len - prefix_len + requests[m].sampling.max_tokens for m in members)


def shard_plan(requests: Sequence[Request], plan: Plan, devices: Sequence[str]) -> list[Shard]:
    """Whole groups to devices, biggest first to the least loaded (ties: the lower device);
    each device keeps the plan's group order. Deterministic."""
    work = [group_work(requests, g.prefix_len, g.members) for g in plan.groups]
    load = [0] * len(devices)
    owner = [0] * len(plan.groups)
    for gi in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        d = min(range(len(devices)), key=lambda k: (load[k], k))
        owner[gi] = d
        load[d] += work[gi]
    shards = []
    for d, device in enumerate(devices):
        keep = np.zeros(len(requests), dtype=bool)
        for gi, g in enumerate(plan.groups):
            if owner[gi] == d:
                keep[list(g.members)] = True
        sub_requests, sub_plan = plan.restrict(requests, keep)
        shards.append(Shard(device, sub_requests, sub_plan, np.flatnonzero(keep), load[d]))
    return [s for s in shards if s.requests]


def stream_parallel(
    model: str | None,
    config: EngineConfig,
    shards: Sequence[Shard],
    on_progress: ProgressFn | None = None,
) -> Iterator[Completion]:
    """Runs each shard in a process of its own; yields Completions (job indices) as they come."""
    ctx = mp.get_context("spawn")
    inbox: Any = ctx.Queue()
    procs = []
    for rank, shard in enumerate(shards):
        args = (rank, model, replace(config, device=shard.device), shard.requests, shard.plan, inbox)
        procs.append(ctx.Process(target=_worker, args=args, daemon=True, name=f"batchllm-{shard.device}"))
    latest: dict[int, EngineProgress] = {}
    total = sum(len(s.requests) for s in shards)
    running = set(range(len(shards)))
    try:
        for p in procs:
            p.start()
        while running:
            try:
                kind, rank, payload = inbox.get(timeout=POLL_S)
            except queue_mod.Empty:
                for rank in list(running):
                    if not procs[rank].is_alive():
                        raise BatchLLMError(
                            f"the engine on {shards[rank].device} stopped without a word "
                            f"(exit code {procs[rank].exitcode}): out of memory?"
                        )
                continue
            if kind == "done":
                yield replace(payload, index=int(shards[rank].job_index[payload.index]))
            elif kind == "progress":
                latest[rank] = payload
                if on_progress is not None:
                    on_progress(_combined(latest, total))
            elif kind == "end":
                running.discard(rank)
            else:  # "error": (class name, message)
                name, message = payload
                cls = getattr(errors, name, None)
                if not (isinstance(cls, type) and issubclass(cls, BatchLLMError)):
                    cls = BatchLLMError
                    message = f"the engine on {shards[rank].device} failed: {name}: {message}"
                raise cls(message)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(timeout=10)


def _combined(latest: dict[int, EngineProgress], total: int) -> EngineProgress:
    parts = latest.values()
    return EngineProgress(
        requests_done=sum(p.requests_done for p in parts),
        requests_total=total,
        prompt_tokens=sum(p.prompt_tokens for p in parts),
        prefill_tokens=sum(p.prefill_tokens for p in parts),
        output_tokens=sum(p.output_tokens for p in parts),
        steps=max(p.steps for p in parts),
        elapsed_s=max(p.elapsed_s for p in parts),
    )


def _worker(rank: int, model: str | None, config: EngineConfig, requests: list[Request], plan: Plan, outbox: Any) -> None:
    """One device's engine (in its own process): Completions, progress and the end to `outbox`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        from batchllm_cli.engine.llm import LLM

        llm = LLM(model, config=config)
        progress = lambda p: outbox.put(("progress", rank, p))  # noqa: E731
        for completion in llm.stream(requests, plan, on_progress=progress):
            outbox.put(("done", rank, completion))
        outbox.put(("end", rank, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the job
        outbox.put(("error", rank, (type(exc).__name__, str(exc))))
