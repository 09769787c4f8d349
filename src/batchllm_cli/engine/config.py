"""Engine settings: one frozen dataclass, built from configs/engine/default.toml plus overrides."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from typing import Any

from batchllm_cli.errors import ConfigError

_DEVICE_TABLES = ("cpu", "cuda")
_POLICIES = ("batchllm", "vllm-like", "sglang-like")


@dataclass(frozen=True)
class EngineConfig:
    """Every knob of the engine; see configs/engine/default.toml for the origin of each default."""

    device: str = "cpu"
    dtype: str = "float32"
    block_size: int = 16
    token_budget: int = 256
    num_kv_blocks: int | None = None  # fixed pool size; None = from kv_cache_gib / kv_cache_fraction
    kv_cache_gib: float = 1.0  # CPU pool size
    kv_cache_fraction: float = 0.85  # GPU: share of free memory after weights
    memory_bound: float = 0.95
    # admission stops while this many requests are admitted (None: KV memory alone decides)
    max_running: int | None = None
    min_prefix_tokens: int = 16
    prefix_sharing: bool = True
    cuda_graphs: bool = False
    # with cuda_graphs: steps of up to this many tokens that no decode graph holds replay
    # piecewise graphs (engine/mixed_graphs.py); 0: they run eagerly
    mixed_graph_tokens: int = 0
    # before a job's first step, capture its CUDA graphs and compile its kernels (engine/warmup.py)
    warmup: bool = False
    # schedule and launch step N+1 while step N runs (engine/engine.py); None: on CUDA only
    overlap: bool | None = None
    seed: int = 0
    # how requests are scheduled: "batchllm" (the plan's prefix groups), or a peer's policy on
    # this engine for comparisons: "vllm-like" / "sglang-like" (engine/caching.py)
    policy: str = "batchllm"
    # torch CPU threads on a CPU device: this share of the cores the process may use, at least
    # one (applied by the CLI, cli/threads.py; --threads and OMP_NUM_THREADS win)
    cpu_thread_share: float = 0.5

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two, got {self.block_size}")
        if self.token_budget < 1:
            raise ConfigError(f"token_budget must be at least 1, got {self.token_budget}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if not 0 < self.memory_bound <= 1:
            raise ConfigError(f"memory_bound must be in (0, 1], got {self.memory_bound}")
        if not 0 < self.kv_cache_fraction <= 1:
            raise ConfigError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if not 0 < self.cpu_thread_share <= 1:
            raise ConfigError(f"cpu_thread_share must be in (0, 1], got {self.cpu_thread_share}")
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.max_running is not None and self.max_running < 1:
            raise ConfigError(f"max_running must be at least 1, got {self.max_running}")
        if self.mixed_graph_tokens < 0:
            raise ConfigError(f"mixed_graph_tokens must be 0 (off) or more, got {self.mixed_graph_tokens}")
        if self.min_prefix_tokens < 1:
            raise ConfigError(f"min_prefix_tokens must be at least 1, got {self.min_prefix_tokens}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.policy not in _POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(_POLICIES)}, got {self.policy!r}")
        if self.device.split(":")[0] not in _DEVICE_TABLES:
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
        object.__setattr__(self, "device", normalize_device(self.device))

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def with_overrides(self, **overrides: Any) -> "EngineConfig":
        """A copy with the given fields changed; None values are ignored (unset CLI options)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown engine setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def normalize_device(device: str) -> str:
    """One spelling per device: "cuda" names the first GPU, "cuda:0" (torch.cuda.set_device and
    Triton's current device need an index); other strings are returned as they are."""
    return "cuda:0" if device == "cuda" else device


def default_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """ConfigError when `device` names a GPU this machine cannot use (before any work starts)."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return
    import torch

    if not index.isdigit() and index:
        raise ConfigError(f"device must be cpu or cuda[:N], got {device!r}")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"cannot use device {device!r}: {why}; use --device cpu (or leave --device out)")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(f"cannot use device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")


def load_engine_config(device: str | None = None, *, available: bool = True, **overrides: Any) -> EngineConfig:
    """The defaults of configs/engine/default.toml for `device` (auto when None), then overrides.
    available=False: a device this machine need not have (dry runs of its schedule)."""
    device = device or default_device()
    if available:
        check_device(device)
    text = resources.files("batchllm_cli.configs").joinpath("engine/default.toml").read_text()
    table = tomllib.loads(text)
    values = {k: v for k, v in table.items() if k not in _DEVICE_TABLES}
    values.update(table.get(device.split(":")[0], {}))
    values["device"] = device
    try:
        base = EngineConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"configs/engine/default.toml: {exc}") from exc
    return base.with_overrides(**overrides)
