"""The `batchllm` entry points: --version, help with examples, `models`, exit code of a usage
error; in-process through Typer's CliRunner, and once through the installed console script."""

from __future__ import annotations

import shutil
import subprocess

from typer.testing import CliRunner

from batchllm_cli import __version__
from batchllm_cli.cli.app import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"batchllm {__version__}"


def test_no_arguments_lists_the_commands() -> None:
    result = runner.invoke(app, [])
    for command in ("run", "plan", "models", "bench"):
        assert command in result.output


def test_run_help_has_every_option_and_examples() -> None:
    result = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--output", "--model", "--max-tokens", "--temperature", "--top-p", "--top-k", "--seed",
                   "--stop", "--strict", "--overwrite", "--plan", "--no-prefix-sharing", "--token-budget",
                   "--device", "--quiet", "--min-p", "--presence-penalty", "--frequency-penalty",
                   "--repetition-penalty", "--logprobs", "--min-tokens", "--samples", "--threads"):
        assert option in result.output, option
    assert "batchllm run sample_data/prompts.jsonl -o out.jsonl" in result.output
    assert "resume" in result.output


def test_help_reads_as_unix_help() -> None:
    """Arguments in capitals, flags without a value type, one -n, every exit code of run."""
    for command in ("run", "plan", "bench", "models"):
        shown = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "<bool>" not in shown and "<str>" not in shown and "list[" not in shown, command
        assert "{" not in shown.split("\n", 3)[1], command  # the usage line: INPUT, not {input}
    run_help = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    assert "Usage: batchllm run [OPTIONS] INPUT" in run_help
    assert "--samples" in run_help and " --n " not in run_help
    codes = run_help[run_help.index("Exit codes"):]
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "8", "130", "143"):
        assert f" {code} " in codes, code
    assert "<bool>" not in runner.invoke(app, ["--help"], terminal_width=200).output


def test_usage_error_exits_2_without_a_traceback() -> None:
    result = runner.invoke(app, ["run", "in.jsonl", "--max-tokens", "0", "-o", "out.jsonl"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_models_lists_the_presets() -> None:
    from batchllm_cli.models.presets import list_presets

    result = runner.invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0
    names = [p.name for p in list_presets()]
    assert "tiny-llama" in names and "smollm2-135m" in names
    for name in names:
        assert name in result.output, name


def test_console_script_answers() -> None:
    assert shutil.which("batchllm"), "no `batchllm` on PATH: install the package (pip install -e .)"
    proc = subprocess.run(["batchllm", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"batchllm {__version__}"
