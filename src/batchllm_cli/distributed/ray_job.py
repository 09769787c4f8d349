"""The driver of a Ray job: connect to a cluster, send the chunks as a Ray Dataset, stream back.

Ray does what it is for: Ray Data hands the chunks (rows, biggest first) to a pool of actors,
one per GPU (`num_gpus=1`) or per CPU, each holding one engine (worker.ShardRunner); an actor
that dies is restarted and its chunk run again (Ray Data's defaults for actor pools: unlimited
restarts and task retries). The driver only plans, cuts, tallies progress and hands the
Completions to the job's writer, once each (a chunk run twice is dropped the second time).
"""

from __future__ import annotations

import logging
import queue as queue_mod
import re
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from batchllm_cli.engine.config import EngineConfig
from batchllm_cli.engine.engine import EngineProgress
from batchllm_cli.errors import BatchLLMError, ConfigError
from batchllm_cli.planner.plan import Plan
from batchllm_cli.planner.shard import ShardCut, Sharding, chunk_shard, chunk_size, shard_plan
from batchllm_cli.types import Completion, Request

LOCAL = "local"  # --ray without an address: a cluster on this machine, started for the job
CHUNK_REQUESTS = 2048  # most requests in one chunk: what a lost actor or driver costs again
MIN_CHUNKS = 4  # chunks per shard at least (when it has that many groups): results stream back
REACH_TIMEOUT_S = 10.0  # a cluster address that does not answer a TCP connect by then is wrong
POLL_S = 1.0  # the driver's progress cadence while no chunk comes back
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its tracebacks
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")
INSTALL_HINT = 'pip install "batchllm-cli[ray]" (here and on every node of the cluster)'


@dataclass(frozen=True)
class RayCluster:
    """The cluster a job runs on: how many actors, and of which kind."""

    address: str  # "local", "auto" or the address given
    workers: int  # actors (= shards): one per GPU, or one per CPU
    gpus: bool
    dashboard_url: str | None

    def describe(self) -> str:
        kind = "GPU" if self.gpus else "CPU"
        return f"ray ({self.address}): {self.workers} shards on {self.workers} {kind} actors"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None, device: str) -> RayCluster:
    """Joins the cluster at `address` ("auto", host:port, ray://...) or starts one on this
    machine (None or "local"), stopped when the process ends (Ray's own exit hook); a driver
    connected already (ray.init before) stays as it is."""
    ray = import_ray()
    started = not ray.is_initialized()
    dashboard = None
    if started:
        _check_reachable(address)
        try:
            ctx = ray.init(
                address=None if address in (None, LOCAL) else address,
                log_to_driver=False,  # the engine prints nothing; Ray's own lines would cover the progress bar
                logging_level=logging.ERROR,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        dashboard = getattr(ctx, "dashboard_url", None) or None
    resources = ray.cluster_resources()
    gpus = device.startswith("cuda")
    workers = int(resources.get("GPU" if gpus else "CPU", 0))
    if workers < 1:
        if started:
            ray.shutdown()
        kind = "GPU" if gpus else "CPU"
        raise ConfigError(f"the Ray cluster at {address or LOCAL} has no {kind}: nothing can run the engine")
    return RayCluster(address or LOCAL, workers, gpus, dashboard)


def _check_reachable(address: str | None) -> None:
    """ConfigError at once when nothing listens at a HOST:PORT address (ray.init would wait on
    it for minutes)."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:  # type: ignore[operator]
        return  # "local", "auto", ray://...: Ray's own business
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` "
            "running there? `auto` joins the cluster of this node)"
        ) from None


def shard_chunks(requests: Sequence[Request], plan: Plan, workers: int) -> tuple[Sharding, list[ShardCut]]:
    """The job's shards (one per worker) and their chunks, biggest first: Ray Data hands each
    chunk to the next free actor, so this order is the least-loaded rule again, live."""
    sharding = shard_plan(requests, plan, workers)
    chunks = [
        c for s in sharding.shards
        for c in chunk_shard(s, chunk_size(len(s.requests), CHUNK_REQUESTS, MIN_CHUNKS))
    ]
    chunks.sort(key=lambda c: -c.cost)
    return sharding, chunks


def stream_ray(
    cluster: RayCluster,
    model: str | None,
    config: EngineConfig,
    chunks: Sequence[ShardCut],
    num_requests: int,
    on_progress: Callable[[EngineProgress], None] | None = None,
) -> Iterator[Completion]:
    """Runs the chunks (ShardCuts of one job of `num_requests`) on the cluster's actors;
    yields each Completion (job index) once, as its chunk comes back."""
    if not chunks:  # every pending line was refused before the model (too long)
        return
    ray = import_ray()
    import ray.data

    from batchllm_cli.distributed.worker import ProgressBoard, ShardRunner, decode_row, encode_chunk

    if model is not None and Path(model).expanduser().exists():  # actors start elsewhere: no relative path
        model = str(Path(model).expanduser().resolve())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines would cover the CLI's
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    rows = [encode_chunk(k, c) for k, c in enumerate(chunks)]
    actor_config = replace(config, device="cuda") if cluster.gpus else config  # each actor sees its GPU as cuda:0
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))).map_batches(
        ShardRunner,
        fn_constructor_kwargs={"model": model, "config": actor_config, "board": board},
        batch_size=1,  # one chunk per call: a chunk is the unit of retry
        compute=ray.data.ActorPoolStrategy(size=cluster.workers, max_tasks_in_flight_per_actor=1),
        **({"num_gpus": 1} if cluster.gpus else {"num_cpus": 1}),
    )
    inbox: queue_mod.Queue = queue_mod.Queue()
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(ds, inbox, stop), daemon=True, name="batchllm-ray")
    seen = np.zeros(num_requests, dtype=bool)
    start = time.perf_counter()
    pump.start()
    try:
        while True:
            try:
                kind, item = inbox.get(timeout=POLL_S)
            except queue_mod.Empty:
                _report(ray, board, num_requests, start, on_progress)
                continue
            if kind == "end":
                break
            if kind == "error":
                raise _clean(item)
            for payload, error in zip(item["completions"], item["error"]):
                for c in decode_row(payload, error):
                    if not seen[c.index]:  # a chunk run twice gives its records once
                        seen[c.index] = True
                        yield c
            _report(ray, board, num_requests, start, on_progress)
        _report(ray, board, num_requests, start, on_progress)
        if not seen.all():
            raise BatchLLMError(f"the Ray job ended with {int((~seen).sum())} requests unanswered: run again to resume")
    finally:
        stop.set()


def _pump(ds: Any, inbox: queue_mod.Queue, stop: threading.Event) -> None:
    """Iterates the dataset (blocking) in a thread, so the driver can report progress and stop."""
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            inbox.put(("batch", batch))
            if stop.is_set():
                return
        inbox.put(("end", None))
    except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
        inbox.put(("error", exc))


def _report(ray: Any, board: Any, total: int, start: float, on_progress: Callable[[EngineProgress], None] | None) -> None:
    if on_progress is None:
        return
    counts = {"requests_done": 0, "prompt_tokens": 0, "prefill_tokens": 0, "output_tokens": 0}
    counts.update(ray.get(board.totals.remote()))
    on_progress(EngineProgress(**counts, requests_total=total, steps=0, elapsed_s=time.perf_counter() - start))


def _clean(exc: BaseException) -> BaseException:
    """One line for a failure of Ray's own or an actor's bug (batchllm's errors come back as
    rows): the last 'SomethingError: message' line of the traceback Ray carries as text."""
    if isinstance(exc, BatchLLMError):
        return exc
    text = ANSI.sub("", str(exc))
    causes = [line.strip() for line in text.splitlines() if ERROR_LINE.match(line.strip())]
    return BatchLLMError(f"the Ray job failed: {causes[-1] if causes else type(exc).__name__}")
