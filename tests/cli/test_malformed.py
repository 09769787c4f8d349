"""A corpus of bad inputs and outputs: one clear message or error record each, never a
traceback, and the good lines answered exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = [
    {"id": "good-1", "prompt": "Hello there"},
    {"id": "good-2", "messages": [{"role": "user", "content": "Hi"}]},
    {"id": "good-3", "prompt": "Bye", "temperature": 0.5, "seed": 3},
]
# (raw line, id in the error record, code): each line is bad for its own reason
BAD = [
    (b'{"id": "broken", "prompt": "no closing brace"', None, "invalid_json"),
    (b"\x00\xff\xfe garbage \x89PNG\x1a", None, "invalid_json"),
    (b'{"id": "types", "prompt": "hi", "max_tokens": "ten"}', "types", "invalid_field"),
    (b'{"id": "empty", "prompt": ""}', "empty", "empty_prompt"),
    (b'{"id": "huge", "prompt": "' + b"x" * (5 * 2**20) + b'"}', None, "line_too_long"),
    (b'{"id": "toolong", "prompt": "hello", "max_tokens": 1000000}', "toolong", "context_length_exceeded"),
    # a prompt alone longer than tiny-llama's context of 32,768 tokens (each " word" is a token)
    (b'{"id": "longprompt", "prompt": "' + b" word" * 40_000 + b'"}', "longprompt", "context_length_exceeded"),
    (b"[1, 2, 3]", None, "invalid_json"),
    (b'{"id": "both", "prompt": "a", "messages": []}', "both", "missing_prompt"),
    (b'{"id": "best", "prompt": "a", "best_of": 3}', "best", None),
    (b'{"id": "many", "prompt": "a", "n": 500}', "many", "invalid_field"),
]
TINY = ["--model", "tiny-llama", "--max-tokens", "4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two torch threads stall each other on a busy machine


def _batchllm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "batchllm_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=ENV)


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good lines with every bad line of BAD between them (good ones first, last, in between)."""
    lines = [json.dumps(GOOD[0]).encode()]
    for i, (raw, _, _) in enumerate(BAD):
        lines.append(raw)
        if i == len(BAD) // 2:
            lines.append(json.dumps(GOOD[1]).encode())
    lines.append(json.dumps(GOOD[2]).encode())
    path = tmp_path_factory.mktemp("mixed") / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_lines_become_error_records_and_good_lines_run_once(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = _batchllm("run", str(mixed), "-o", str(out), *TINY)
    _no_traceback(proc)
    assert proc.returncode == 8, proc.stderr
    assert f"{len(BAD)} input line(s) could not run" in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    answered = [r["id"] for r in records if "text" in r]
    assert sorted(answered) == sorted(g["id"] for g in GOOD)
    errors = [r for r in records if "error" in r]
    assert len(errors) == len(BAD) and len(records) == len(GOOD) + len(BAD)
    raw_lines = mixed.read_bytes().split(b"\n")
    for err in errors:
        raw = raw_lines[err["line"] - 1]  # the record names the line it came from
        expected = next((rid, code) for r, rid, code in BAD if r == raw)
        assert err["id"] == expected[0]
        assert expected[1] is None or err["error"]["code"] == expected[1]
        assert err["error"]["message"]
    # run again: nothing is lost, nothing is repeated
    again = _batchllm("run", str(mixed), "-o", str(out), *TINY)
    assert again.returncode == 8
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


def test_strict_lists_every_bad_line_and_writes_nothing(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = _batchllm("run", str(mixed), "-o", str(out), *TINY, "--strict")
    _no_traceback(proc)
    assert proc.returncode == 2
    raw_lines = mixed.read_bytes().split(b"\n")
    for raw, _, code in BAD:
        if code == "context_length_exceeded":
            continue  # known after tokenizing: its line is checked by the model's context
        line = raw_lines.index(raw) + 1
        assert f"line {line}" in proc.stderr
    assert not out.exists() or out.read_text() == ""


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    _no_traceback(proc)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for w in words:
        assert w in errors[0], errors[0]


def test_missing_input_and_directory_input(tmp_path: Path) -> None:
    _one_line_error(_batchllm("run", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")), 2, "does not exist")
    _one_line_error(_batchllm("run", str(tmp_path), "-o", str(tmp_path / "o.jsonl")), 2, "directory")


def test_duplicate_ids_name_both_lines_before_anything_is_written(tmp_path: Path) -> None:
    src = tmp_path / "dups.jsonl"
    src.write_text('{"id":"a","prompt":"x"}\n{"id":"b","prompt":"y"}\n\n{"id":"a","prompt":"z"}\n')
    out = tmp_path / "o.jsonl"
    _one_line_error(_batchllm("run", str(src), "-o", str(out), *TINY), 2, "line 4", "line 1", "duplicate")
    assert not out.exists()


def test_unwritable_output(tmp_path: Path) -> None:
    src = tmp_path / "one.jsonl"
    src.write_text('{"id":"a","prompt":"x"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("")
    _one_line_error(_batchllm("run", str(src), "-o", str(blocker / "o.jsonl"), *TINY), 3, "cannot write")
    _one_line_error(_batchllm("run", str(src), "-o", str(tmp_path), *TINY), 3, "directory")
    _one_line_error(_batchllm("run", str(src), "-o", str(src), *TINY), 3, "input")


def test_empty_input_says_so(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    proc = _batchllm("run", str(src), "-o", str(tmp_path / "o.jsonl"), *TINY)
    _no_traceback(proc)
    assert proc.returncode == 0 and "no input lines" in proc.stderr


def test_unknown_model_is_one_clear_line(tmp_path: Path) -> None:
    src = tmp_path / "one.jsonl"
    src.write_text('{"id":"a","prompt":"x"}\n')
    _one_line_error(_batchllm("run", str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "no-such-model"), 4, "no-such-model")


@pytest.mark.parametrize("device, words", [("cuda:x", ["cuda[:N]"]), ("tpu", ["cpu or cuda"]), ("cuda", ["cuda", "--device cpu"])])
def test_a_device_this_machine_cannot_use_is_one_clear_line(tmp_path: Path, device: str, words: list[str]) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    src, out = tmp_path / "one.jsonl", tmp_path / "o.jsonl"
    src.write_text('{"id":"a","prompt":"x"}\n')
    _one_line_error(_batchllm("run", str(src), "-o", str(out), "--device", device), 5, *words)
    assert not out.exists()  # refused before anything was written


def test_missing_plan_file_names_the_command_that_makes_one(tmp_path: Path) -> None:
    src = tmp_path / "one.jsonl"
    src.write_text('{"id":"a","prompt":"x"}\n')
    plan, out = tmp_path / "plan.json", tmp_path / "o.jsonl"
    proc = _batchllm("run", str(src), "-o", str(out), *TINY, "--plan", str(plan))
    _one_line_error(proc, 6, "cannot read the plan file")
    assert f"batchllm plan {src} --json {plan}" in " ".join(proc.stderr.split())
    assert not out.exists() or out.read_text() == ""  # refused before any request ran
