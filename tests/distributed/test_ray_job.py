"""`batchllm run --ray` on a local Ray cluster that the test starts (ray.init(num_cpus=2): two
CPU actors), the tiny random-weight model, greedy: the same records as one process, every id
once after the driver or an actor is killed with SIGKILL mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is part of .[test]: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "prompts.jsonl"
ARGS = ["--model", "tiny-llama", "--device", "cpu", "--quiet"]
# a cluster of this test only, on the loopback address: no token to hand the drivers
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def address():  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def _cmd(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batchllm_cli", "run", str(SAMPLE), "-o", str(output), *ARGS, *extra]


def _run(output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(output, *extra), capture_output=True, text=True, timeout=600, env=ENV)


def _records(path: Path) -> dict[str, dict]:
    """The output's records by id; fails on a repeated id."""
    out: dict[str, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        rec = json.loads(line)
        assert rec["id"] not in out, f"id {rec['id']} written twice (line {n})"
        out[rec["id"]] = rec
    return out


def _answers(records: dict[str, dict]) -> dict[str, tuple]:
    """What must not change: the text, and the usage (a prefix group split across shards would
    show as a second member that computed the prefix, shared_prefix_tokens 0)."""
    return {k: (r["text"], r["finish_reason"], r["usage"]["prompt_tokens"], r["usage"]["shared_prefix_tokens"])
            for k, r in records.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("one") / "one.jsonl"
    proc = _run(out, "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    return _answers(_records(out))


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _start_and_wait_for_records(output: Path, address: str) -> subprocess.Popen:
    """A `--ray` driver, once it has written some records but not all."""
    proc = subprocess.Popen(_cmd(output, "--max-tokens", "24", "--ray", address), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _lines(output) == 0:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no record within 300 s"
        time.sleep(0.05)
    return proc


def test_ray_output_equals_one_process(tmp_path: Path, address: str, reference: dict) -> None:
    out = tmp_path / "ray.jsonl"
    proc = _run(out, "--max-tokens", "24", "--ray", address)
    assert proc.returncode == 0, proc.stderr
    records = _records(out)
    assert len(records) == 50 and _answers(records) == reference
    side = json.loads((tmp_path / "ray.jsonl.batchllm.json").read_text())
    assert side["complete"] and side["runner"].startswith(f"ray ({address}): 2 shards on 2 CPU actors")


def test_driver_killed_mid_job_then_rerun_gives_every_id_once(tmp_path: Path, address: str, reference: dict) -> None:
    out = tmp_path / "ray.jsonl"
    proc = _start_and_wait_for_records(out, address)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = _lines(out)
    assert 0 < kept < 50, kept  # killed mid-job: some records kept, some to do
    assert not json.loads((tmp_path / "ray.jsonl.batchllm.json").read_text())["complete"]
    again = _run(out, "--max-tokens", "24", "--ray", address)
    assert again.returncode == 0, again.stderr
    # the rerun plans what is left: a group's first member left computes its prefix (reuse 0),
    # as on a local resume, so compare all but shared_prefix_tokens
    assert {k: v[:3] for k, v in _answers(_records(out)).items()} == {k: v[:3] for k, v in reference.items()}


def _actor_pids() -> list[int]:
    """Processes of our Ray Data actors (Ray names them after the callable class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ShardRunner" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_an_actor_killed_mid_job_is_replaced_and_no_record_is_written_twice(tmp_path: Path, address: str, reference: dict) -> None:
    out = tmp_path / "ray.jsonl"
    proc = _start_and_wait_for_records(out, address)
    pids = _actor_pids()
    assert pids, "no ShardRunner actor process found"
    os.kill(pids[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert _answers(_records(out)) == reference


def test_llm_predictor_answers_a_ray_data_pipeline_like_the_cli(address: str, reference: dict) -> None:
    from batchllm_cli.distributed.predictor import LLMPredictor

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    ds = ray.data.from_items([{"id": r["id"], "messages": r["messages"]} for r in rows])
    out = ds.map_batches(
        LLMPredictor, fn_constructor_kwargs={"model": "tiny-llama", "sampling": {"max_tokens": 24}, "device": "cpu"},
        batch_size=64, concurrency=1, num_cpus=1,  # one batch: the whole file planned together
    ).take_all()
    got = {r["id"]: (r["generated_text"], r["finish_reason"], int(r["prompt_tokens"])) for r in out}
    assert got == {k: v[:3] for k, v in reference.items()}
    assert sum(int(r["shared_prefix_tokens"]) for r in out) > 0


def test_an_actors_error_stops_the_job_with_that_error(address: str) -> None:
    import numpy as np

    from batchllm_cli.distributed.ray_job import connect, shard_chunks, stream_ray
    from batchllm_cli.engine.config import load_engine_config
    from batchllm_cli.errors import CapacityError, ModelError
    from batchllm_cli.planner import PlanSettings, build_plan
    from batchllm_cli.types import Request, SamplingParams

    rng = np.random.default_rng(0)
    prefix = rng.integers(100, 1000, 64)
    requests = [Request(i, f"r{i}", np.concatenate([prefix, rng.integers(100, 1000, 8)]).astype(np.int32),
                        SamplingParams(max_tokens=8)) for i in range(6)]
    cluster = connect(address, "cpu")  # the test's cluster: already connected
    _, chunks = shard_chunks(requests, build_plan(requests, PlanSettings()), cluster.workers)
    with pytest.raises(CapacityError, match="KV blocks"):  # raised while running a chunk
        list(stream_ray(cluster, "tiny-llama", load_engine_config("cpu", num_kv_blocks=1), chunks, len(requests)))
    with pytest.raises(ModelError, match="no model"):  # raised while the actor starts
        list(stream_ray(cluster, "/no/such/model.gguf", load_engine_config("cpu"), chunks, len(requests)))
