"""`batchllm bench` on a tiny workload and the tiny random preset, on the CPU."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from batchllm_cli.errors import ConfigError

TINY = """
description = "tiny: 4 groups x 2"
num_groups = 4
degree = 2
prefix_len = 32
distinct_len = 8
output_len = 4
"""


def _app() -> typer.Typer:
    """The real app when it registers `bench`; else a one-command app around the same function."""
    try:
        from batchllm_cli.cli.app import app

        return app
    except ImportError:
        from batchllm_cli.cli.bench import bench

        app = typer.Typer()
        app.command("bench")(bench)
        app.command("noop", hidden=True)(lambda: None)  # two commands: typer keeps the name
        return app


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("bench")
    monkeypatch_module.setenv("BATCHLLM_CACHE_DIR", str(tmp / "cache"))
    (tmp / "tiny.toml").write_text(TINY)
    out = tmp / "res" / "b.json"
    args = ["bench", str(tmp / "tiny.toml"), "--model", "tiny-llama", "--device", "cpu",
            "--no-sharing-too", "--peers", "hf,vllm-like,sglang-like", "--out", str(out), "--threads", "1", "--kv-blocks", "64"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    return result, out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_bench_runs_every_system_and_writes_its_json(tiny_run):
    result, out = tiny_run
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads(out.read_text())
    assert doc["workload"]["num_requests"] == 8 and doc["model"] == "tiny-llama"
    assert doc["device"] == "cpu" and doc["dtype"] == "float32"
    runs = {r["system"]: r for r in doc["runs"]}
    assert list(runs) == ["batchllm", "batchllm-no-sharing", "vllm-like", "sglang-like", "hf-generate-batch"]
    for r in runs.values():
        assert (r["num_requests"], r["output_tokens"], r["short_outputs"]) == (8, 32, 0)
        assert r["elapsed_s"] > 0 and r["requests_per_s"] == pytest.approx(8 / r["elapsed_s"], rel=2e-3)
        assert r["logical_prefill_tokens"] == 8 * 40
    # sharing on computes each 32-token prefix once: 4 * 32 + 8 * 8 = 192 of 320
    assert runs["batchllm"]["prefill_tokens"] == 192 == doc["workload"]["analytic_processed_prefill_tokens"]
    assert runs["batchllm"]["saving_ratio"] == pytest.approx(0.4)
    assert runs["batchllm-no-sharing"]["prefill_tokens"] == 320
    assert runs["batchllm"]["steps"] > 0 and runs["batchllm"]["kv_pool_blocks"] == 64
    assert runs["hf-generate-batch"]["prefill_tokens"] is None
    for peer in ("vllm-like", "sglang-like"):  # what the LRU cache still held when a request came
        assert 192 <= runs[peer]["prefill_tokens"] <= 320 and runs[peer]["kv_pool_blocks"] == 64
    assert set(doc["speedups"]) == {f"batchllm/{s}" for s in list(runs)[1:]}
    assert "batchllm-no-sharing" in result.output and "results written to" in result.output


def test_bench_without_a_workload_lists_them():
    result = CliRunner().invoke(_app(), ["bench"])
    assert result.exit_code == 0
    assert "peers-1b" in result.output and "industry" in result.output


@pytest.mark.parametrize(
    "args, match",
    [(["bench", "no-such-workload"], "peers-1b"), (["bench", "peers-1b", "--peers", "vllm"], "choose from hf, vllm-like")],
)
def test_bench_refuses_unknown_names(args, match):
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code != 0
    if isinstance(result.exception, ConfigError):  # our one-command app lets errors through
        assert match in str(result.exception)
    else:  # the real app maps them to exit codes and messages
        assert result.exit_code == ConfigError.exit_code and match in result.output
