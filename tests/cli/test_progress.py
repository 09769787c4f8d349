"""What `batchllm run` shows: log lines off a terminal, the live display on one, --quiet, the
summary table and the exit codes, with the engine replaced by the echoing backend (no model)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from batchllm_cli.cli import backend as backend_module
from batchllm_cli.cli.app import app
from batchllm_cli.cli.progress import Eta, LogReporter, RichReporter, make_reporter
from batchllm_cli.io.echo import EchoBackend
from batchllm_cli.io.job import JobProgress

runner = CliRunner()


def _progress(done: int, total: int = 10, elapsed: float = 5.0) -> JobProgress:
    return JobProgress(done, total, resumed=0, errors=0, prompt_tokens=100, prefill_tokens=20,
                       output_tokens=50 * done, elapsed_s=elapsed)


def test_log_reporter_prints_phases_and_throttled_progress() -> None:
    buf = io.StringIO()
    rep = LogReporter(Console(file=buf, width=200), every_s=3600.0)
    rep.phase("loading the model")
    rep.progress(_progress(2))  # the first report is printed
    rep.progress(_progress(4))  # within every_s: held back
    rep.progress(_progress(10))  # the last one is always printed
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and all(" batchllm: " in line for line in lines)
    assert lines[0].endswith("loading the model")
    assert "2/10 requests, 100 output tokens (20.0/s), ETA 0:00:20, prefix tokens saved 80 (80%)" in lines[1]
    assert "10/10 requests" in lines[2] and "ETA 0:00:00" in lines[2]


def test_rich_reporter_shows_requests_rate_eta_and_saving() -> None:
    buf = io.StringIO()
    with RichReporter(Console(file=buf, width=200, force_terminal=True)) as rep:
        rep.phase("running")
        rep.progress(_progress(4))
    shown = buf.getvalue()
    for part in ("running", "4/10 requests", "40.0 tok/s", "ETA 0:00:08", "prefix saved 80 (80%)"):
        assert part in shown, part
    assert "None" not in shown


def test_eta_follows_the_recent_pace() -> None:
    eta = Eta(window_s=30.0)
    # Steady: 1 request/s for 60 s of 100 -> 40 s left, whatever the window.
    for t in range(0, 61, 10):
        shown = eta(_progress(t, total=100, elapsed=float(t)))
    assert shown == "0:00:40"
    # Draining: 3 more requests in the next 30 s (0.1/s) -> 37 left take 370 s, not the
    # 37 s that the whole-run average (63 in 90 s) would say.
    for t, done in ((70, 61), (80, 62), (90, 63)):
        shown = eta(_progress(done, total=100, elapsed=float(t)))
    assert shown == "0:06:10"
    # Nothing finished in the last window: unknown; all done: zero.
    for t in (100, 110, 120):
        shown = eta(_progress(63, total=100, elapsed=float(t)))
    assert shown == "?"
    assert eta(_progress(100, total=100, elapsed=130.0)) == "0:00:00"


def test_eta_is_unknown_before_the_first_request_finishes() -> None:
    eta = Eta()
    assert eta(_progress(0, total=10, elapsed=0.0)) == "?"
    assert eta(_progress(0, total=10, elapsed=5.0)) == "?"
    assert eta(_progress(5, total=10, elapsed=10.0)) == "0:00:10"  # the run is shorter than a window


def test_make_reporter_picks_by_terminal_and_quiet() -> None:
    assert isinstance(make_reporter(Console(file=io.StringIO(), force_terminal=True), quiet=False), RichReporter)
    assert isinstance(make_reporter(Console(file=io.StringIO(), force_terminal=False), quiet=False), LogReporter)
    quiet = make_reporter(Console(file=io.StringIO(), force_terminal=True), quiet=True)
    assert not isinstance(quiet, (RichReporter, LogReporter))


@pytest.fixture
def echo_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """`batchllm run` on the echo backend: each prompt is its own answer, no model is loaded."""
    monkeypatch.setattr(backend_module, "EngineBackend", lambda *args, **kwargs: EchoBackend())


def _input(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_run_prints_log_lines_and_the_summary(tmp_path: Path, echo_engine: None) -> None:
    inp = _input(tmp_path, [json.dumps({"id": f"q{i}", "prompt": f"say {i}"}) for i in range(3)])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["run", str(inp), "-o", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "batchllm: checking the input" in result.stderr
    assert "3/3 requests" in result.stderr
    for row in ("input lines", "answered by this run", "prefix tokens saved", "wall time"):
        assert row in result.stderr, row
    assert result.stdout == ""  # stdout stays free for pipes
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["say 0", "say 1", "say 2"]
    again = runner.invoke(app, ["run", str(inp), "-o", str(out)], terminal_width=200)
    assert again.exit_code == 0 and "already in the output (resumed)" in again.stderr


def test_run_quiet_prints_nothing_and_bad_lines_exit_8(tmp_path: Path, echo_engine: None) -> None:
    inp = _input(tmp_path, ['{"id": "a", "prompt": "fine"}', "{not json"])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["run", str(inp), "-o", str(out), "--quiet"])
    assert result.exit_code == 8
    assert "1 input line(s) could not run" in result.stderr
    assert "batchllm:" not in result.stderr and "input lines" not in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("text") for r in records] == ["fine", None] and records[1]["line"] == 2
