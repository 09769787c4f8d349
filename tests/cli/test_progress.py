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


def _progress(done: int, total: int = 10, elapsed: float = 5.0, prefill: int = 20, output: int | None = None,
              prompt_left: int | None = None, output_left: int | None = None) -> JobProgress:
    return JobProgress(done, total, resumed=0, errors=0, prompt_tokens=100, prefill_tokens=prefill,
                       output_tokens=50 * done if output is None else output, elapsed_s=elapsed,
                       prefix_tokens_saved=80, prompt_left=prompt_left, output_left=output_left)


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
    assert "2/10 requests, 100 output tokens (20.0/s), ETA ?, prefix tokens saved 80 (80%)" in lines[1]
    assert "10/10 requests" in lines[2] and "ETA 0:00:00" in lines[2]


def test_rich_reporter_shows_requests_rate_eta_and_saving() -> None:
    buf = io.StringIO()
    with RichReporter(Console(file=buf, width=200, force_terminal=True)) as rep:
        rep.phase("running")
        rep.progress(_progress(2, elapsed=2.0, output_left=100))
        rep.progress(_progress(4, elapsed=4.0, output_left=50))  # 100 output tokens in 2 s
    shown = buf.getvalue()
    for part in ("running", "4/10 requests", "50.0 tok/s", "ETA 0:00:01", "prefix saved 80 (80%)"):
        assert part in shown, part
    assert "None" not in shown


def test_eta_is_the_work_left_at_the_recent_cost_of_each_kind_of_token() -> None:
    eta = Eta(window_s=100.0)
    # Steps that cost 0.001 s a prompt token and 0.01 s an output token, in two mixes.
    t = prefill = output = 0
    for _ in range(30):
        for dp, do in ((200, 10), (100, 50)):
            t, prefill, output = t + 0.001 * dp + 0.01 * do, prefill + dp, output + do
            shown = eta.seconds(_progress(1, total=10, elapsed=t, prefill=prefill, output=output,
                                          prompt_left=10_000 - prefill, output_left=2000 - output))
    assert shown == pytest.approx(0.001 * 1000 + 0.01 * 200, rel=0.05)  # neither cost alone would say it


def test_eta_follows_a_slower_pace_then_only_counts_down() -> None:
    eta = Eta(window_s=5.0)
    t, output, left = 0.0, 0, 800
    shown = []
    for step in range(150):  # a batch draining: output tokens get dearer (0.01 s, then 0.04 s)
        cost = 0.01 if step < 20 else 0.04
        t, output, left = t + 4 * cost, output + 4, left - 4
        shown.append(eta.seconds(_progress(1, total=10, elapsed=t, output=output, prefill=0, prompt_left=0,
                                           output_left=left)))
    assert shown[-1] == pytest.approx(0.04 * left, rel=0.05)  # the new pace
    tail = shown[100:]
    assert all(b <= a for a, b in zip(tail, tail[1:]))  # at a steady pace: only down


def test_eta_is_unknown_before_the_pace_and_zero_at_the_end() -> None:
    eta = Eta()
    assert eta(_progress(0, total=10, elapsed=0.0)) == "?"
    assert eta(_progress(0, total=10, elapsed=5.0)) == "?"  # nothing finished yet: no pace
    assert eta(_progress(5, total=10, elapsed=10.0)) == "0:00:05"  # 5 requests in 5 s: 5 left
    assert eta(_progress(10, total=10, elapsed=20.0)) == "0:00:00"


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
