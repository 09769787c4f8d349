"""`batchllm bench --predict GPU`: what each system's schedule costs at the roofline of a GPU,
from dry runs of its scheduler alone (no model, no weights, any machine, any scale).

For every case and system: the steps its scheduler takes (engine/simulate.py, one step ahead as
the CUDA loop runs), the prompt tokens it computes, the unique KV bytes it reads and the weights
it reads per step (bench/roofline.py), and the time that work takes at the GPU's rates
(configs/gpus.toml). It is a bound, not a measurement: a system reaches some fraction of it (the
H200 runs measured 50-73%). It shows what the paper's memory regime does at full size, where a
measured run would take longer than a GPU session has (the long prefix: hours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from batchllm_cli.bench.roofline import DeviceRates, ModelCost, StepCounter, WorkCount
from batchllm_cli.errors import ConfigError

STEPS_AHEAD = 1  # the CUDA loop (engine.steps_ahead), for jobs without penalties


def gpu_rates(gpu: str) -> DeviceRates:
    """The matmul and copy rates configs/gpus.toml states for `gpu`."""
    from batchllm_cli.bench.kv_pool import gpu_table

    table = gpu_table()
    entry = table.get(gpu)
    with_rates = sorted(k for k, v in table.items() if isinstance(v, dict) and "matmul_tflops" in v)
    if not isinstance(entry, dict) or "matmul_tflops" not in entry:
        raise ConfigError(f"--predict: no rates for {gpu!r} in configs/gpus.toml: choose from {', '.join(with_rates)}")
    return DeviceRates(entry["matmul_tflops"] * 1e12, entry["copy_gbps"] * 1e9, "bfloat16", f"configs/gpus.toml [{gpu}]")


@dataclass(frozen=True)
class Prediction:
    """One system's dry run on one case."""

    system: str
    work: WorkCount
    ideal_s: float
    num_requests: int

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.ideal_s if self.ideal_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "ideal_s": round(self.ideal_s, 4),
                "ideal_requests_per_s": round(self.requests_per_s, 3), **self.work.to_dict()}  # fmt: skip


def predict_case(case: Any, systems: Sequence[str], pool_blocks: int, rates: DeviceRates,
                 token_budget: int | None = None) -> list[Prediction]:
    """Each system's dry run of `case` (a suite Case) in a pool of `pool_blocks` blocks, with
    the CUDA engine defaults (configs/engine/default.toml [cuda])."""
    from batchllm_cli.bench.model import bench_source
    from batchllm_cli.bench.runner import ENGINE_SYSTEMS, sampling_for
    from batchllm_cli.bench.workloads import generate
    from batchllm_cli.engine.config import load_engine_config
    from batchllm_cli.engine.simulate import simulate
    from batchllm_cli.planner import PlanSettings, build_plan
    from batchllm_cli.types import Request

    work = generate(case.spec)
    cost = ModelCost.of(bench_source(case.model).config, "bfloat16")
    sampling = sampling_for(work)
    requests = [Request(i, i, np.asarray(p, dtype=np.int32), sampling) for i, p in enumerate(work.prompts)]
    base = load_engine_config("cuda", available=False, num_kv_blocks=pool_blocks,
                              **({"token_budget": token_budget} if token_budget else {}))
    out = []
    for system in systems:
        if system not in ENGINE_SYSTEMS:
            continue  # the HF peer has no scheduler of ours to dry-run
        config = base.with_overrides(**ENGINE_SYSTEMS[system])
        plan = build_plan(requests, PlanSettings.from_engine(config, pool_blocks))
        counter = StepCounter(cost, config.block_size)
        sim = simulate(requests, plan.groups, num_blocks=pool_blocks, block_size=config.block_size,
                       token_budget=config.token_budget, memory_bound=config.memory_bound, policy=config.policy,
                       max_running=config.max_running, ahead=STEPS_AHEAD, on_step=counter)  # fmt: skip
        count = counter.result(sim.peak_blocks)
        out.append(Prediction(system, count, count.ideal_s(rates), len(requests)))
    return out
