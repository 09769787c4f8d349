"""`batchllm bench` on a tiny workload and the tiny random preset, on the CPU: two repeats of
every system, interleaved; the JSON document, the PNG beside it, the README rows; errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from batchllm_cli.cli.app import app

TINY = """
description = "tiny: 4 groups x 2"
num_groups = 4
degree = 2
prefix_len = 32
distinct_len = 8
output_len = 4
"""
ENGINE_SYSTEMS = ["batchllm", "batchllm-no-sharing", "vllm-like", "sglang-like"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("bench")
    monkeypatch_module.setenv("BATCHLLM_CACHE_DIR", str(tmp / "cache"))
    (tmp / "tiny.toml").write_text(TINY)
    out = tmp / "res" / "b.json"
    args = ["bench", str(tmp / "tiny.toml"), "--model", "tiny-llama", "--device", "cpu", "--repeats", "2",
            "--no-sharing-too", "--peers", "hf,vllm-like,sglang-like", "--out", str(out), "--threads", "1", "--kv-blocks", "64"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    return result, out


def test_two_repeats_of_every_system_interleaved(tiny_run):
    result, out = tiny_run
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads(out.read_text())
    assert doc["version"] == 2 and doc["repeats"] == 2 and doc["rates"]["matmul_tflops"] > 0
    (rep,) = doc["reports"]
    assert rep["workload"]["num_requests"] == 8 and rep["model"] == "tiny-llama"
    assert rep["device"] == "cpu" and rep["dtype"] == "float32"
    runs = rep["runs"]
    # engine systems round by round (A B C D A B C D), then the HF peer's runs back to back
    assert [(r["system"], r["repeat"]) for r in runs] == [(s, k) for k in (0, 1) for s in ENGINE_SYSTEMS] + [
        ("hf-generate-batch", 0), ("hf-generate-batch", 1)]  # fmt: skip
    assert [r["order"] for r in runs] == list(range(10))
    for r in runs:
        assert (r["num_requests"], r["output_tokens"], r["short_outputs"]) == (8, 32, 0)
        assert r["elapsed_s"] > 0 and r["requests_per_s"] == pytest.approx(8 / r["elapsed_s"], rel=2e-3)
        assert r["logical_prefill_tokens"] == 8 * 40
    by = {(r["system"], r["repeat"]): r for r in runs}
    # sharing on computes each 32-token prefix once: 4 * 32 + 8 * 8 = 192 of 320
    assert by["batchllm", 1]["prefill_tokens"] == 192 == rep["workload"]["analytic_processed_prefill_tokens"]
    assert by["batchllm-no-sharing", 0]["prefill_tokens"] == 320
    for s in ENGINE_SYSTEMS:
        r = by[s, 0]
        assert r["kv_pool_blocks"] == 64 and 0 < r["peak_kv_blocks"] <= 64 and r["steps"] > 0
        assert 0 < r["mean_step_fill"] <= 1 and 0 < r["roofline_fraction"]
        assert r["steps"] == rep["work"][s]["steps"] and r["notes"] == []  # the dry run counted the real steps
        assert r["model_tokens"] == rep["work"][s]["model_tokens"]
    for peer in ("vllm-like", "sglang-like"):  # what the LRU cache still held when a request came
        assert 192 <= by[peer, 0]["prefill_tokens"] <= 320
    summary = rep["summary"]["batchllm"]["requests_per_s"]
    values = sorted(by["batchllm", k]["requests_per_s"] for k in (0, 1))
    assert summary["n"] == 2 and (summary["min"], summary["max"]) == pytest.approx(values, rel=1e-3)
    assert summary["median"] == pytest.approx(sum(values) / 2, rel=1e-3)
    assert set(rep["ratios"]) == {f"batchllm/{s}" for s in ENGINE_SYSTEMS[1:] + ["hf-generate-batch"]}
    assert "batchllm-no-sharing" in result.output and "results written to" in result.output
    assert "estimate on this CPU" in result.output and "run 2/2" in result.output  # log lines: not a terminal


def test_the_plot_is_a_png_that_opens(tiny_run):
    import matplotlib.image

    _, out = tiny_run
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_readme_rows_come_from_the_saved_report(tiny_run):
    _, out = tiny_run
    result = CliRunner().invoke(app, ["bench", "--readme-table", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    median = doc["reports"][0]["summary"]["batchllm"]["requests_per_s"]["median"]
    (row,) = result.output.strip().splitlines()
    assert row.startswith("| tiny: ") and row.count(" | ") == 3 and f"**{median:.2f}" in row
    assert "vllm-like" in row and "sharing off" in row and "2 interleaved runs" in row


def test_replot_draws_a_saved_report(tiny_run, tmp_path):
    _, out = tiny_run
    target = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["bench", "--replot", str(out), "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == PNG_SIGNATURE


def test_bench_without_a_workload_lists_them_and_the_suites():
    result = CliRunner().invoke(app, ["bench"])
    assert result.exit_code == 0
    assert "peers-1b" in result.output and "industry" in result.output and "paper" in result.output


def test_the_paper_suite_dry_run_lists_its_cases():
    result = CliRunner().invoke(app, ["bench", "--suite", "paper", "--scale", "0.05", "--dry-run"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("shared-2000-200-d16", "shared-1000-1000-d4", "long-prefix-16000-d16", "industry", "no-sharing"):
        assert name in result.output
    assert "21,728 tokens" in result.output and "x 0.05" in result.output  # the pools scale with the requests
    assert "qwen2.5-7b" in result.output and "vllm-like x1.6" in result.output
    full = CliRunner().invoke(app, ["bench", "--suite", "paper", "--dry-run"], terminal_width=200)
    assert "434,528 tokens" in full.output


def test_a_suite_runs_the_cases_and_systems_asked_for():
    args = ["bench", "--suite", "paper", "--cases", "industry,no-sharing", "--peers", "vllm-like", "--dry-run"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "industry" in result.output and "no-sharing" in result.output and "shared-2000" not in result.output
    assert "systems: batchllm, vllm-like" in result.output
    bad = CliRunner().invoke(app, ["bench", "peers-1b", "--cases", "industry", "--dry-run"])
    assert bad.exit_code == 5 and "--cases picks cases of a --suite" in bad.output


def test_help_has_examples():
    result = CliRunner().invoke(app, ["bench", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for text in ("--repeats", "--suite", "--kv-pool-like", "--profile", "--readme-table", "Examples",
                 "batchllm bench --suite paper --scale 0.05", "Exit codes"):  # fmt: skip
        assert text in result.output, text


@pytest.mark.parametrize(
    "toml, args, match",
    [
        ("this is = = not toml", [], "is not valid TOML"),
        (TINY.replace("num_groups = 4", "num_groups = -1"), [], "num_groups must be at least 1"),
        (TINY.replace("num_groups = 4", 'num_groups = "four"'), [], "num_groups must be an integer"),
        (TINY.replace("num_groups = 4", "num_groups = 100000000000"), [], "at most 10,000,000 requests"),
        (TINY.replace("output_len = 4", "output_len = 40000"), [], "exceed tiny-llama's context of 32,768"),
        (TINY, ["--peers", "vllm"], "choose from hf, vllm-like"),
        (TINY, ["--scale", "0.5", "--requests", "4"], "not both"),
        (TINY, ["--kv-pool-like", "llama-3.1-8b@tpu"], "unknown GPU"),
    ],
)
def test_bad_workloads_and_options_are_one_line_and_exit_5(tmp_path, toml, args, match):
    f = tmp_path / "w.toml"
    f.write_text(toml)
    result = CliRunner().invoke(app, ["bench", str(f), "--model", "tiny-llama", "--device", "cpu", *args])
    assert result.exit_code == 5, result.output
    assert match in result.output and "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


def test_a_missing_workload_name_lists_the_choices():
    result = CliRunner().invoke(app, ["bench", "no-such-workload"])
    assert result.exit_code == 5 and "peers-1b" in result.output and "Traceback" not in result.output


def test_an_unreadable_report_exits_2(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    for args in (["--readme-table", str(bad)], ["--readme-table", str(tmp_path / "missing.json")]):
        result = CliRunner().invoke(app, ["bench", *args])
        assert result.exit_code == 2 and "Traceback" not in result.output


def test_ctrl_c_says_what_was_saved(tmp_path, monkeypatch):
    import batchllm_cli.bench.runner as runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setenv("BATCHLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "run_workload", interrupted)
    (tmp_path / "tiny.toml").write_text(TINY)
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "tiny.toml"), "--model", "tiny-llama", "--device", "cpu",
                                      "--out", str(tmp_path / "b.json")])  # fmt: skip
    assert result.exit_code == 130
    assert "bench interrupted during tiny" in result.output and "nothing was written" in result.output


def test_a_stopped_bench_keeps_the_runs_it_finished(tmp_path, monkeypatch):
    """The JSON is rewritten after every timed run, the workload under way marked incomplete, so
    a job cut by a time limit (or Ctrl-C) keeps its runs; the README row says so."""
    import batchllm_cli.bench.runner as runner

    real, calls = runner._execute, []

    def stop_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setenv("BATCHLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "_execute", stop_at_third)
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "tiny.toml"), "--model", "tiny-llama", "--device", "cpu",
                                      "--peers", "vllm-like", "--repeats", "2", "--no-warmup", "--threads", "1",
                                      "--kv-blocks", "64", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 130, result.output
    assert f"0 finished workload(s) and 2 timed run(s) of the one under way are in {out}" in result.output
    (rep,) = json.loads(out.read_text())["reports"]
    assert rep["complete"] is False
    assert [(r["system"], r["repeat"]) for r in rep["runs"]] == [("batchllm", 0), ("vllm-like", 0)]
    assert rep["ratios"]["batchllm/vllm-like"] > 0 and rep["work"]["vllm-like"]["steps"] > 0
    row = CliRunner().invoke(app, ["bench", "--readme-table", str(out)]).output
    assert "**incomplete**" in row and "1 interleaved runs" in row


def test_predict_dry_runs_each_system_at_a_gpus_roofline(tmp_path):
    out = tmp_path / "p.json"
    args = ["bench", "--suite", "paper", "--scale", "0.01", "--cases", "shared-2000-200-d16", "--peers", "vllm-like",
            "--predict", "h200", "--out", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "predicted, not measured" in result.output and "795 TFLOP/s" in result.output
    doc = json.loads(out.read_text())
    (case,) = doc["cases"]
    ours, peer = case["systems"]
    assert (ours["system"], peer["system"]) == ("batchllm", "vllm-like")
    assert ours["prefill_tokens"] < peer["prefill_tokens"]  # the shared prefixes computed once
    # ideal time: prefill FLOPs at the matmul rate + (weights + unique KV) at the copy rate
    want = ours["prefill_tflop"] / 795 + (ours["weight_gb"] + ours["unique_kv_gb"]) / 4227
    assert ours["ideal_s"] == pytest.approx(want, rel=1e-3)
    bad = CliRunner().invoke(app, ["bench", "--suite", "paper", "--cases", "industry", "--predict", "tpu"])
    assert bad.exit_code == 5 and "no rates for 'tpu'" in bad.output and "h200" in bad.output
