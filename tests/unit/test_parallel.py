"""Data parallelism (engine/parallel.py): whole groups shared out by work, results mapped back
to the job's indices, one engine per device in processes of their own (CPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batchllm_cli.engine.config import load_engine_config
from batchllm_cli.engine.parallel import parse_devices, shard_plan, stream_parallel
from batchllm_cli.errors import CapacityError, ConfigError
from batchllm_cli.planner import PlanSettings, build_plan
from batchllm_cli.planner.shard import group_cost
from batchllm_cli.types import Request, SamplingParams

ROOT = Path(__file__).resolve().parents[2]


def _requests(prefixes: list[tuple[int, int, int]], seed: int = 0) -> list[Request]:
    """(prefix length, members, own length) per group, members of a group share the prefix."""
    rng = np.random.default_rng(seed)
    out: list[Request] = []
    for plen, members, own in prefixes:
        prefix = rng.integers(100, 1000, plen)
        for _ in range(members):
            ids = np.concatenate([prefix, rng.integers(100, 1000, own)]).astype(np.int32)
            out.append(Request(len(out), f"r{len(out)}", ids, SamplingParams(max_tokens=8)))
    order = rng.permutation(len(out))  # the file is not in group order
    return [Request(i, out[j].id, out[j].prompt_ids, out[j].sampling) for i, j in enumerate(order)]


def test_shards_take_whole_groups_balanced_and_map_back() -> None:
    requests = _requests([(400, 6, 20), (300, 4, 30), (200, 3, 10), (100, 5, 5), (64, 2, 8), (0, 3, 50)])
    plan = build_plan(requests, PlanSettings())
    shards = shard_plan(requests, plan, ["cpu", "cpu", "cpu"])
    seen = np.concatenate([s.job_index for s in shards])
    assert sorted(seen.tolist()) == list(range(len(requests)))  # every request exactly once
    by_request = {int(j): k for k, s in enumerate(shards) for j in s.job_index}
    for g in plan.groups:  # a group never spans two devices
        assert len({by_request[m] for m in g.members}) == 1
    for s in shards:
        s.plan.validate(s.requests)
        assert [r.id for r in s.requests] == [requests[int(j)].id for j in s.job_index]
        assert s.work == sum(group_cost(s.requests, g.prefix_len, g.members) for g in s.plan.groups)
    works = sorted(s.work for s in shards)
    biggest = max(group_cost(requests, g.prefix_len, g.members) for g in plan.groups)
    assert works[-1] - works[0] <= biggest  # greedy biggest-first: within one group of even
    again = shard_plan(requests, plan, ["cpu", "cpu", "cpu"])
    assert [s.job_index.tolist() for s in again] == [s.job_index.tolist() for s in shards]


def test_more_devices_than_groups_leaves_the_rest_idle() -> None:
    requests = _requests([(300, 4, 10)])
    plan = build_plan(requests, PlanSettings())
    assert len(shard_plan(requests, plan, ["cpu"] * 3)) == 1


def test_device_lists() -> None:
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(ConfigError, match="named twice"):
        parse_devices("cuda:0,cuda:0")
    with pytest.raises(ConfigError):
        parse_devices(",")


def test_a_worker_error_stops_the_job_with_that_error() -> None:
    requests = _requests([(64, 2, 8)])
    plan = build_plan(requests, PlanSettings())
    config = load_engine_config("cpu", num_kv_blocks=1)  # nothing fits: the worker refuses
    shards = shard_plan(requests, plan, ["cpu"])
    with pytest.raises(CapacityError, match="KV blocks"):
        list(stream_parallel("tiny-llama", config, shards))


def test_two_engines_answer_like_one(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join((ROOT / "sample_data" / "prompts.jsonl").read_bytes().splitlines(keepends=True)[:12]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = {}
    for name, extra in (("one", []), ("two", ["--device", "cpu,cpu"])):
        out = tmp_path / f"{name}.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "batchllm_cli", "run", str(src), "-o", str(out), "--model", "tiny-llama",
             "--max-tokens", "4", "--logprobs", "1", "-q", *extra], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(x) for x in out.read_text().splitlines()]
        # logprobs travel back from the worker processes with their completions
        outs[name] = {r["id"]: (r["text"], [lp["top_logprobs"][0]["token_id"] for lp in r["logprobs"]]) for r in records}
    assert len(outs["one"]) == 12 and outs["two"] == outs["one"]


def test_progress_of_the_engines_adds_up() -> None:
    from batchllm_cli.engine.engine import EngineProgress
    from batchllm_cli.engine.parallel import _combined

    a = EngineProgress(3, 0, 300, 120, 40, 7, 1.5, prefix_tokens_saved=180, kv_blocks_used=11)
    b = EngineProgress(2, 0, 200, 90, 30, 9, 2.5, prefix_tokens_saved=110, kv_blocks_used=4)
    both = _combined({0: a, 1: b}, total=9)
    assert (both.requests_done, both.requests_total, both.prompt_tokens, both.prefill_tokens) == (5, 9, 500, 210)
    assert (both.output_tokens, both.steps, both.elapsed_s) == (70, 9, 2.5)
    assert (both.prefix_tokens_saved, both.kv_blocks_used) == (290, 15)  # saved was dropped before
