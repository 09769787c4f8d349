"""Host time per engine step: scheduler, input preparation and sampling bookkeeping, no model.

A stand-in model (zeros for hidden states and logits over a 32-token vocabulary, so that the
arithmetic a GPU would do costs next to nothing here) takes the place of the Llama forward, so
what is timed is the Python and numpy work the step loop does per step around the GPU's: schedule, build and upload the layout, sample, apply the tokens, stop checks.
N requests decode together (groups of 16 sharing a 64-token prefix, 32-token own parts); the
median host time of the steps where all N decode is reported, with the spread over repeats.
Time is this process's CPU time (time.process_time): on a shared machine, wall time mostly
measures the other processes.

    OMP_NUM_THREADS=1 python benchmarks/bench_host_step.py [--running 64,256,1024] [--repeats 3]
        [--out results/host_step.json]

It runs on any tree whose engine has run_plan(runner, requests, plan, stop, ...) and
ModelRunner(model, config, num_blocks): PYTHONPATH=OLD/src:OLD/kernels times an older commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from batchllm_cli.engine.config import EngineConfig
from batchllm_cli.engine.engine import run_plan
from batchllm_cli.engine.runner import ModelRunner
from batchllm_cli.engine.stop import StopChecker
from batchllm_cli.models.config import ModelConfig
from batchllm_cli.planner import PlanSettings, build_plan
from batchllm_cli.types import Request, SamplingParams

VOCAB = 32  # logits and argmax are device work on a GPU: keep the stand-in's tiny
DECODE_STEPS = 48


class StandIn(torch.nn.Module):
    """Zeros of the right shapes: the step loop's host work without the model's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.calls: list[tuple[int, float]] = []  # (tokens, CPU time) of each forward

    def forward(self, input_ids, positions, meta, kv_caches):  # noqa: ANN001, ANN201
        self.calls.append((int(input_ids.shape[0]), time.process_time()))
        return torch.zeros((input_ids.shape[0], self.config.hidden_size))

    def compute_logits(self, hidden):  # noqa: ANN001, ANN201
        return torch.zeros((hidden.shape[0], VOCAB))


def model_config() -> ModelConfig:
    from transformers import LlamaConfig

    hf = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
    return ModelConfig.from_hf(hf)


def step_times(running: int) -> list[float]:
    """Host CPU seconds of each step in which all `running` requests decode."""
    rng = np.random.default_rng(0)
    # long enough that all N decode together for DECODE_STEPS steps, even if admission takes a
    # step per group (the scheduler before the group walk filled steps)
    max_tokens = DECODE_STEPS + -(-running // 16) + 2
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    requests = []
    for g in range(-(-running // 16)):
        prefix = rng.integers(0, VOCAB, 64)
        for _ in range(min(16, running - 16 * g)):
            prompt = np.concatenate([prefix, rng.integers(0, VOCAB, 32)]).astype(np.int32)
            requests.append(Request(len(requests), str(len(requests)), prompt, params))
    blocks_each = -(-(32 + max_tokens) // 16) + 4
    num_blocks = running * blocks_each + 64
    config = EngineConfig(device="cpu", token_budget=max(4096, 2 * running), num_kv_blocks=num_blocks)
    model = StandIn(model_config())
    runner = ModelRunner(model, config, num_blocks)
    plan = build_plan(requests, PlanSettings(token_budget=config.token_budget, num_kv_blocks=num_blocks))
    stop = StopChecker(None, ())
    for _ in run_plan(runner, requests, plan, stop, token_budget=config.token_budget, memory_bound=1.0):
        pass
    # from one forward to the next, where both steps are decodes of all `running` requests
    calls = model.calls
    return [b[1] - a[1] for a, b in zip(calls, calls[1:]) if a[0] == b[0] == running]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--running", default="64,256,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for n in (int(x) for x in args.running.split(",")):
        medians = [statistics.median(step_times(n)) * 1e6 for _ in range(args.repeats)]
        rows[n] = {"median_us": statistics.median(medians), "min_us": min(medians), "max_us": max(medians)}
        print(f"{n:5d} running decodes: {rows[n]['median_us']:8.0f} us per step "
              f"[{rows[n]['min_us']:.0f}-{rows[n]['max_us']:.0f}] over {args.repeats} repeats", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"benchmark": "host_step", "commit": commit, "machine": platform.node(), "cpu": platform.processor(),
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "steps": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
