"""Suites of benchmark cases (configs/workloads/suites/<name>.toml): `batchllm bench --suite paper`.

A case is a workload run on a model in a KV pool, with the targets its report checks. `--scale F`
shrinks every case's request count (whole groups: the first groups of the full workload).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from batchllm_cli.bench.report import Target
from batchllm_cli.bench.workloads import WorkloadSpec, load_spec
from batchllm_cli.errors import ConfigError

SUITE_DIR = "workloads/suites"


@dataclass(frozen=True)
class Case:
    """One row of a suite's report."""

    spec: WorkloadSpec
    model: str
    kv_pool_like: str | None  # MODEL@GPU of configs/gpus.toml; None: the engine's default pool
    targets: tuple[Target, ...] = ()
    # kv_pool_like's pool times this: a suite run at --scale F scales its pools by F too, so each
    # keeps its share of the workload and LRU caches evict as they do at the paper's size
    pool_scale: float = 1.0


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    systems: tuple[str, ...]
    cases: tuple[Case, ...]


def suite_names() -> list[str]:
    folder = resources.files("batchllm_cli.configs").joinpath(SUITE_DIR)
    return sorted(e.name[: -len(".toml")] for e in folder.iterdir() if e.name.endswith(".toml"))


def load_suite(name: str) -> Suite:
    """A packaged suite by name."""
    entry = resources.files("batchllm_cli.configs").joinpath(f"{SUITE_DIR}/{name}.toml")
    if not entry.is_file():
        raise ConfigError(f"no suite {name!r}: choose from {', '.join(suite_names())}")
    return parse_suite(entry.read_text(), name, f"configs/{SUITE_DIR}/{name}.toml")


def parse_suite(text: str, name: str, where: str) -> Suite:
    from batchllm_cli.bench.runner import ALL_SYSTEMS

    try:
        t = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    systems = tuple(t.get("systems", ()))
    bad = [s for s in systems if s not in ALL_SYSTEMS]
    if not systems or bad:
        raise ConfigError(f"{where}: systems must be a list of {', '.join(ALL_SYSTEMS)}, got {list(systems)}")
    cases = []
    for i, c in enumerate(t.get("case", [])):
        at = f"{where}, case {i + 1}"
        if not isinstance(c, dict) or "workload" not in c or "model" not in c:
            raise ConfigError(f"{at}: a case needs workload and model")
        targets = []
        for tg in c.get("targets", []):
            if not (isinstance(tg, dict) and isinstance(tg.get("over"), str) and isinstance(tg.get("at_least"), (int, float))):
                raise ConfigError(f"{at}: a target is {{ over = SYSTEM or \"best-peer\", at_least = RATIO }}, got {tg!r}")
            targets.append(Target(tg["over"], float(tg["at_least"])))
        cases.append(Case(load_spec(str(c["workload"])), str(c["model"]), c.get("kv_pool_like"), tuple(targets)))
    if not cases:
        raise ConfigError(f"{where}: no [[case]]")
    return Suite(name, str(t.get("description", "")), systems, tuple(cases))


def scaled(spec: WorkloadSpec, scale: float) -> WorkloadSpec:
    """`spec` with about `scale` x its requests (at least one group)."""
    if not 0 < scale <= 1:
        raise ConfigError(f"--scale must be in (0, 1], got {scale}")
    if scale == 1:
        return spec
    return spec.scaled(max(1, round(spec.expected_requests * scale)))


def scaled_case(case: Case, scale: float) -> Case:
    """`case` at about `scale` x its requests, in a pool `scale` x its own (its memory regime)."""
    return replace(case, spec=scaled(case.spec, scale), pool_scale=scale)


def pick_cases(suite: Suite, names: list[str]) -> tuple[Case, ...]:
    """The suite's cases whose workloads are named, in the suite's order; ConfigError for a name
    that is none of them."""
    known = [c.spec.name for c in suite.cases]
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"suite {suite.name!r} has no case {', '.join(map(repr, bad))}: choose from {', '.join(known)}")
    return tuple(c for c in suite.cases if c.spec.name in names)


def describe(suite: Suite, scale: float = 1.0) -> list[dict[str, Any]]:
    """The cases as rows (workload, model, requests at this scale, pool, targets): what runs."""
    rows = []
    for c in suite.cases:
        spec = scaled(c.spec, scale)
        rows.append({
            "workload": spec.name,
            "model": c.model,
            "requests": round(spec.expected_requests),
            "kv_pool_like": c.kv_pool_like,
            "targets": [f"{t.over} x{t.at_least:g}" for t in c.targets],
            "paper": spec.paper,
        })  # fmt: skip
    return rows
