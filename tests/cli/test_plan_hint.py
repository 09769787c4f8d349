"""`batchllm plan --json`'s "run it with" line can be copied and run as it is."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from batchllm_cli.cli.app import app
from batchllm_cli.cli.plan import run_command

runner = CliRunner()


def test_the_hint_repeats_every_option_the_plan_depends_on() -> None:
    words = shlex.split(run_command(Path("in put.jsonl"), Path("p.json"), "tiny-llama", 8, True, 2))
    assert words[:7] == ["batchllm", "run", "in put.jsonl", "-o", "OUT", "--plan", "p.json"]
    for option in (["--model", "tiny-llama"], ["--max-tokens", "8"], ["--samples", "2"], ["--no-prefix-sharing"]):
        assert " ".join(option) in " ".join(words), option
    assert shlex.split(run_command(Path("in.jsonl"), Path("p.json"), None, 256, False, 1))[7:] == []  # defaults


def test_the_printed_command_runs_the_plan(tmp_path: Path) -> None:
    inp, plan, out = tmp_path / "in.jsonl", tmp_path / "plan.json", tmp_path / "out.jsonl"
    shared = "You answer questions about the weather in one short sentence. " * 4
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{shared}Question {i}:"}) + "\n" for i in range(4)))
    made = runner.invoke(app, ["plan", str(inp), "--json", str(plan), "--model", "tiny-llama", "--max-tokens", "3",
                               "-n", "2", "--device", "cpu"], terminal_width=400)
    assert made.exit_code == 0, made.output
    command = re.search(r"run it with `([^`]+)`", made.output)[1]
    args = [str(out) if w == "OUT" else w for w in shlex.split(command)][1:]
    ran = runner.invoke(app, [*args, "--device", "cpu", "-q"])
    assert ran.exit_code == 0, ran.output
    assert len(out.read_text().splitlines()) == 4
