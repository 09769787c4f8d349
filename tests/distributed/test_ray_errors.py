"""--ray's errors before anything runs: one line and the config exit code (5), no cluster needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchllm_cli.distributed.ray_job import connect, import_ray
from batchllm_cli.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "prompts.jsonl"


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(ConfigError, match=r"batchllm-cli\[ray\]"):
        import_ray()


def test_an_address_where_nothing_listens_fails_at_once() -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        connect("127.0.0.1:1", "cpu")  # loopback, a port nothing listens on: refused at once


def test_a_device_list_with_ray_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batchllm_cli", "run", str(SAMPLE), "-o", str(tmp_path / "o.jsonl"),
         "--model", "tiny-llama", "--device", "cpu,cpu", "--ray", "local"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 5, proc.stderr
    assert "--ray runs one engine per GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
