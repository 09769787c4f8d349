"""Data parallelism: one engine per device, the plan's groups shared out between them.

Groups are independent (DESIGN.md, "Scale beyond one GPU"), so a job splits along them: the
planner's sharding (planner/shard.py, shared with `--ray`) gives each device whole groups, the
biggest first to the least loaded (a group that outweighs a device's share is split), and each
device runs its groups in the plan's order.
Every device gets a process of its own (spawned: CUDA cannot be forked) that loads the model and
streams its Completions back; the parent writes them as they come. A worker's failure stops the
job with that worker's error. Sampling seeds belong to the requests, so results do not depend on
how the job was split.

Workers live only as long as their parent: they ignore SIGINT/SIGTERM (a Ctrl-C or a process-group
SIGTERM reaches the parent, which stops the job cleanly and kills them), and the kernel kills them
when the parent dies in any way (PR_SET_PDEATHSIG on Linux; elsewhere a thread that watches the
parent's pid).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from batchllm_cli import errors
from batchllm_cli.engine.config import EngineConfig, check_device
from batchllm_cli.engine.engine import EngineProgress, ProgressFn
from batchllm_cli.errors import BatchLLMError, ConfigError
from batchllm_cli.planner.plan import Plan
from batchllm_cli.planner.shard import shard_plan as planner_shards
from batchllm_cli.types import Completion, Request

POLL_S = 1.0  # how often the parent looks at its workers (and its stop flag) while none reports
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def shard_plan(requests: Sequence[Request], plan: Plan, devices: Sequence[str]) -> list[Shard]:
    """The planner's shards of the job (planner/shard.py), one per device, in device order;
    devices left without work are dropped."""
    cuts = planner_shards(requests, plan, len(devices)).shards
    return [Shard(device, c.requests, c.plan, c.job_index, c.cost) for device, c in zip(devices, cuts)]


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
        args = (rank, model, replace(config, device=shard.device), shard.requests, shard.plan, inbox, os.getpid())
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
                if on_progress is not None:  # the job looks at its stop flag here, as after a step
                    on_progress(_combined(latest, total))
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
                p.kill()  # they ignore SIGTERM; nothing of theirs needs saving (the parent writes)
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
        steps=max((p.steps for p in parts), default=0),
        elapsed_s=max((p.elapsed_s for p in parts), default=0.0),
        prefix_tokens_saved=sum(p.prefix_tokens_saved for p in parts),
        kv_blocks_used=sum(p.kv_blocks_used for p in parts),
    )


def _die_with_parent(parent_pid: int) -> None:
    """Ends this worker when its parent ends, however it ends (kill -9 included)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="batchllm-parent-watch", daemon=True).start()


def _worker(
    rank: int, model: str | None, config: EngineConfig, requests: list[Request], plan: Plan, outbox: Any,
    parent_pid: int,
) -> None:
    """One device's engine (in its own process): Completions, progress and the end to `outbox`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    try:
        from batchllm_cli.engine.llm import LLM

        llm = LLM(model, config=config)
        progress = lambda p: outbox.put(("progress", rank, p))  # noqa: E731
        for completion in llm.stream(requests, plan, on_progress=progress):
            outbox.put(("done", rank, completion))
        outbox.put(("end", rank, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the job
        outbox.put(("error", rank, (type(exc).__name__, str(exc))))
