"""How many CPU threads a command gives torch (and the tokenizer): one decision, one place.

`--threads N` wins, then an OMP_NUM_THREADS the user set, then the engine config's share of the
cores (configs/engine/default.toml, `cpu_thread_share`). The choice goes into the environment
too, so that processes the job spawns (one engine per device) start with it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

THREAD_ENV = ("OMP_NUM_THREADS", "RAYON_RS_NUM_CPUS")  # torch's OpenMP pool, the tokenizer's pool


@dataclass(frozen=True)
class Threads:
    count: int
    source: str  # "--threads", "OMP_NUM_THREADS" or "default" (the config's share of the cores)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def choose_threads(option: int | None, share: float, cores: int | None = None) -> Threads:
    """The thread count for --threads `option` (None when not given) and the config's `share`."""
    if option is not None:
        return Threads(option, "--threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return Threads(int(env), "OMP_NUM_THREADS")
    cores = usable_cores() if cores is None else cores
    return Threads(max(1, math.floor(cores * share)), "default")


def apply_threads(threads: Threads) -> None:
    """Sets the count for torch (now, if it is loaded, and at its start otherwise), for the
    tokenizer's pool and for child processes."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads.count)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads.count:
        torch.set_num_threads(threads.count)


THREADS_HELP = (
    "CPU threads for torch and the tokenizer. Default on a CPU device: half the cores "
    "(configs/engine/default.toml), or OMP_NUM_THREADS when set. On a CPU that other jobs "
    "share, fewer threads are faster: threads that wait for each other stall at every step."
)


def set_threads(option: int | None, config: Any) -> Threads | None:
    """Applies the choice for a command on `config` (an EngineConfig): on a CPU device always,
    on a GPU only when --threads asks (the host's threads barely matter there)."""
    if option is None and config.device != "cpu":
        return None
    threads = choose_threads(option, config.cpu_thread_share)
    apply_threads(threads)
    return threads
