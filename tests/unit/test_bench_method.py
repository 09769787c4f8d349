"""The benchmark's method on paper: interleaving, medians and spread, the roofline arithmetic
(checked against a hand computation), KV pools of a stated size, targets, the paper suite."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.bench.estimate import estimate_s
from batchllm_cli.bench.kv_pool import kv_pool_like, kv_pool_of_tokens
from batchllm_cli.bench.report import BenchReport, RunResult, Target
from batchllm_cli.bench.roofline import DeviceRates, ModelCost, StepCounter
from batchllm_cli.bench.runner import timing_order
from batchllm_cli.bench.stats import Spread
from batchllm_cli.bench.suite import describe, load_suite, scaled
from batchllm_cli.engine.step import DecodeRun, SharedSegment, StepBatch, StepItem
from batchllm_cli.errors import ConfigError
from batchllm_cli.models.config import ModelConfig
from batchllm_cli.models.presets import get_preset


def _tiny() -> ModelConfig:
    return ModelConfig.from_hf(get_preset("tiny-llama").make_hf_config())


def _run(system: str, secs: float, repeat: int = 0, **kw) -> RunResult:
    return RunResult(system=system, num_requests=10, output_tokens=100, elapsed_s=secs,
                     logical_prefill_tokens=1000, repeat=repeat, **kw)  # fmt: skip


def test_timed_runs_go_round_the_systems():
    assert timing_order(["a", "b", "c"], 3) == [
        ("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("c", 2),
    ]  # fmt: skip
    assert timing_order(["a"], 2) == [("a", 0), ("a", 1)]


def test_spread_is_the_median_and_the_extremes():
    s = Spread.of([12.0, 9.0, 10.0])
    assert (s.median, s.lo, s.hi, s.n) == (10.0, 9.0, 12.0, 3)
    assert s.rel_spread == pytest.approx(0.2)  # max(10 - 9, 12 - 10) / 10
    assert Spread.of([1.0, 2.0, 3.0, 10.0]).median == 2.5
    assert s.format("{:.1f}") == "10.0 [9.0-12.0]" and Spread.of([5.0, 5.0]).format("{:.1f}") == "5.0"
    with pytest.raises(ValueError):
        Spread.of([])


def test_report_summarizes_every_run_per_system():
    runs = (
        _run("batchllm", 1.0, 0), _run("vllm-like", 2.0, 0),
        _run("batchllm", 0.8, 1), _run("vllm-like", 2.5, 1),
        _run("batchllm", 1.25, 2), _run("vllm-like", 2.0, 2),
    )  # fmt: skip
    rep = BenchReport({"name": "w", "num_requests": 10}, "m", "cpu", "float32", runs)
    summary = rep.summary()
    assert list(summary) == ["batchllm", "vllm-like"]
    rps = summary["batchllm"]["requests_per_s"]
    assert (rps.median, rps.lo, rps.hi, rps.n) == (10.0, 8.0, 12.5, 3)
    assert summary["vllm-like"]["requests_per_s"].median == 5.0
    assert rep.ratios() == {"batchllm/vllm-like": 2.0}
    assert rep.unstable() == ["batchllm", "vllm-like"]  # 12.5 is 25% over 10; 4 is 20% under 5
    doc = rep.to_dict()
    assert len(doc["runs"]) == 6 and doc["summary"]["batchllm"]["requests_per_s"]["max"] == 12.5
    steady = BenchReport({}, "m", "cpu", "float32", (_run("batchllm", 1.0), _run("batchllm", 1.05, 1)))
    assert steady.unstable() == []


def test_targets_compare_medians():
    med = {"batchllm": 10.0, "vllm-like": 5.0, "sglang-like": 8.0}
    assert Target("vllm-like", 1.6).check(med) | {} == {"over": "vllm-like", "at_least": 1.6, "vs": "vllm-like", "ratio": 2.0, "met": True}
    best = Target("best-peer", 1.3).check(med)
    assert (best["vs"], best["ratio"], best["met"]) == ("sglang-like", 1.25, False)
    assert Target("hf-generate-batch", 2).check(med)["met"] is None


def test_model_cost_by_hand():
    cost = ModelCost.of(_tiny(), "float32")
    # tiny-llama: hidden 64, 4 heads x 16, 2 KV heads, intermediate 128, 2 layers, vocab 49,152
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert cost.linear_params == 2 * per_layer == 73_728
    assert cost.lm_head_params == 49_152 * 64
    assert cost.attn_flops_per_pair == 4 * 2 * 4 * 16
    assert cost.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert cost.weight_bytes == (73_728 + 3_145_728) * 4


def _item(kind, q, own_ctx, table, shared_id, request=0):
    return StepItem(kind=kind, request=request, group=0, token_ids=np.zeros(q, dtype=np.int32), start_pos=0,
                    own_ctx_len=own_ctx, own_block_table=tuple(table), shared_id=shared_id, samples=True)  # fmt: skip


def test_roofline_of_a_step_by_hand():
    decodes = DecodeRun(
        requests=np.array([1, 2, 3]), groups=np.zeros(3, np.int64), token_ids=np.zeros(3, np.int32),
        start_pos=np.zeros(3, np.int64),
        # 21 own tokens: block 6 full, 5 in block 7; a peer's request: 32 tokens, cached blocks
        # 1, 2; the same cached blocks, 9 tokens of its own
        own_ctx_lens=np.array([20, 31, 40], np.int32), shared_ids=np.array([0, -1, -1], np.int32),
        feeds=np.full(3, -1), tables=((6, 7), (1, 2), (1, 2, 9)),
    )  # fmt: skip
    batch = StepBatch(
        step=0,
        decodes=decodes,
        chunks=(_item("prefill", 8, 0, [5], 0),),  # 8 own tokens after a 40-token shared prefix
        shared=(SharedSegment(group=0, length=40, block_table=(3, 4, 8)),),
    )
    counter = StepCounter(ModelCost.of(_tiny(), "float32"), block_size=16)
    counter(batch)
    work = counter.result(peak_kv_blocks=9)
    # unique KV: the shared 40 + 8 + (block 6) + 5 + (blocks 1, 2 once) + 9 = 40 + 8 + 5 + 9 + 3 * 16
    assert work.kv_bytes == 110 * 512
    # prefill: 8 queries after 40 keys, causal among themselves: 8 * 40 + 36 (query, key) pairs
    assert work.prefill_flops == 2 * 73_728 * 8 + 512 * (8 * 40 + 36) == 1_361_920
    assert (work.steps, work.model_tokens, work.prefill_tokens) == (1, 11, 8)
    assert work.weight_bytes == 12_877_824
    rates = DeviceRates(matmul_flops_per_s=1e9, copy_bytes_per_s=1e8, dtype="float32")
    assert work.ideal_s(rates) == pytest.approx(1_361_920 / 1e9 + (12_877_824 + 56_320) / 1e8)
    run = _run("batchllm", 2 * work.ideal_s(rates), roofline_s=work.ideal_s(rates), steps=1, model_tokens=11, token_budget=22)
    assert run.roofline_fraction == pytest.approx(0.5) and run.mean_step_fill == pytest.approx(0.5)
    assert estimate_s({"batchllm": work}, rates, runs_per_system=2) > 2 * work.ideal_s(rates)


def test_kv_pool_like_the_papers_regime():
    pool = kv_pool_like("llama-3.1-8b@a100-80gb", 16)
    # (80 GiB x 0.9 - 8.03e9 bf16 weights - 4 GiB) / (32 layers x 8 KV heads x 128 x 2 x 2 bytes)
    weights = (32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 2 * 128256 * 4096) * 2
    want = int((80 * 0.9 * 2**30 - weights - 4 * 2**30) // 131072)
    assert 425_000 < want < 440_000 and pool.tokens == -(-want // 16) * 16 and pool.blocks == pool.tokens // 16
    assert "a100-80gb" in pool.source
    assert kv_pool_of_tokens(1000, 16).blocks == 63
    for bad in ("llama-3.1-8b", "llama-3.1-8b@tpu", "nope@a100-80gb"):
        with pytest.raises(ConfigError):
            kv_pool_like(bad, 16)


def test_the_paper_suite_lists_its_cases():
    suite = load_suite("paper")
    assert suite.systems == ("batchllm", "vllm-like", "sglang-like", "batchllm-no-sharing")
    shapes = {(c.spec.prefix_len.lo, c.spec.distinct_len.lo, c.spec.degree.lo) for c in suite.cases[:6]}
    assert shapes == {(p, s, d) for p, s in ((2000, 200), (2000, 1000), (1000, 1000)) for d in (16, 4)}
    assert all(round(c.spec.expected_requests) == 6400 and c.spec.output_len == 100 for c in suite.cases[:6])
    by_name = {c.spec.name: c for c in suite.cases}
    assert by_name["long-prefix-16000-d16"].spec.prefix_len.lo == 16000
    assert by_name["industry"].model == "qwen2.5-7b" and round(by_name["industry"].spec.expected_requests) == 8001
    assert by_name["no-sharing"].spec.degree.hi == 1
    assert all(c.kv_pool_like.endswith("@a100-80gb") for c in suite.cases)
    assert by_name["shared-2000-200-d16"].targets == (Target("vllm-like", 1.6),)
    rows = describe(suite, 0.05)
    assert len(rows) == 9 and rows[0]["requests"] == 320
    assert scaled(suite.cases[0].spec, 0.05).num_groups == 20
    with pytest.raises(ConfigError):
        scaled(suite.cases[0].spec, 1.5)
    with pytest.raises(ConfigError, match="no suite"):
        load_suite("nope")


def test_a_scaled_suite_case_keeps_its_pools_share_of_the_workload():
    from batchllm_cli.bench.session import PoolChoice
    from batchllm_cli.bench.suite import pick_cases, scaled_case

    suite = load_suite("paper")
    (case,) = pick_cases(suite, ["shared-2000-200-d16"])
    full = PoolChoice().pool_for(case, 16)
    small = scaled_case(case, 0.05)
    pool = PoolChoice().pool_for(small, 16)
    assert pool.blocks == round(full.blocks * 0.05) and pool.tokens == pool.blocks * 16
    assert "x 0.05" in pool.source
    # the same share of the logical prompt tokens at both sizes (within one group's rounding)
    share = lambda c, p: p.tokens / (c.spec.expected_requests * (c.spec.prefix_len.mean + c.spec.distinct_len.mean))  # noqa: E731
    assert share(small, pool) == pytest.approx(share(case, full), rel=0.02)
    assert PoolChoice(kv_tokens=1000).pool_for(small, 16).tokens == 1008  # an explicit pool is not scaled
    assert [c.spec.name for c in pick_cases(suite, ["industry", "shared-2000-200-d16"])] == ["shared-2000-200-d16", "industry"]
    with pytest.raises(ConfigError, match="no case 'nope'"):
        pick_cases(suite, ["nope"])


def test_profile_reports_gpu_time_over_the_unprofiled_runs_too():
    import torch

    from batchllm_cli.bench.profile import profile_run, with_timed_wall

    a = torch.randn(64, 64)
    p = profile_run(lambda: [a @ a for _ in range(20)], "cpu")
    assert p["activity"] == "cpu" and p["busy_s"] > 0 and p["top"] and p["wall_s"] > 0
    fixed = {"busy_s": 0.6, "wall_s": 1.2}
    assert with_timed_wall(fixed, [1.0, 0.8, 2.0]) == fixed | {"timed_wall_s": 1.0, "busy_fraction_of_timed": 0.6}
    assert with_timed_wall(fixed, [0.8, 1.2])["timed_wall_s"] == 1.0  # the median of an even count
    assert with_timed_wall(fixed, []) == fixed
