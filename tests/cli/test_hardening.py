"""Bad files and arguments of every kind for `run`, `plan` and `models`: one `error:` line and the
documented exit code each, never a traceback, and nothing written by a run that did not start;
a model directory that names custom code is refused without a prompt, even on a terminal."""

from __future__ import annotations

import json
import os
import pty
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchllm_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_model_refusals import TINY_CONFIG, model_dir  # noqa: E402

runner = CliRunner()


def _files(tmp: Path) -> dict[str, Path]:
    """The bad files the cases name, made once per test."""
    inp = tmp / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "hello"}) + "\n")
    (tmp / "plan_not_json.json").write_text("{not json")
    (tmp / "plan_types.json").write_text(json.dumps({"version": 1, "fingerprint": 3, "groups": 5, "settings": [],
                                                     "stats": None}))
    (tmp / "plan_huge.json").write_bytes(b'{"groups": [' + b"[0, [1]], " * 200_000 + b"[0, [1]]]}")
    (tmp / "garbage.gguf").write_bytes(b"not a gguf file at all")
    (tmp / "counts.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62) + b"\0" * 32)
    made = {}
    for name, config in (("neg", {**TINY_CONFIG, "num_hidden_layers": -1}),
                         ("huge", {**TINY_CONFIG, "hidden_size": 10**12}),
                         ("types", {**TINY_CONFIG, "hidden_size": "wide"}),
                         ("nomodeltype", {k: v for k, v in TINY_CONFIG.items() if k != "model_type"}),
                         ("code", {**TINY_CONFIG, "auto_map": {"AutoConfig": "evil.Evil"}})):
        (tmp / name).mkdir()
        made[name] = model_dir(tmp / name, config=config)
    (tmp / "pickle").mkdir()
    made["pickle"] = model_dir(tmp / "pickle", weights="pytorch_model.bin")
    (tmp / "notjson").mkdir()
    made["notjson"] = model_dir(tmp / "notjson")
    (made["notjson"] / "config.json").write_text("{oops")
    return {"in": inp, **made}


# (command line with {placeholders}, exit code, text the one error line holds)
CASES = [
    ("run {tmp}/missing.jsonl -o {out}", 2, "missing.jsonl"),
    ("run {tmp} -o {out}", 2, "is a directory"),
    ("run {in} -o {tmp}", 3, "is a directory"),
    ("run {in} -o {out} --model tiny-llama --plan {tmp}/plan_not_json.json", 6, "not a batchllm plan"),
    ("run {in} -o {out} --model tiny-llama --plan {tmp}/plan_types.json", 6, "not a batchllm plan"),
    ("run {in} -o {out} --model tiny-llama --plan {tmp}/plan_huge.json", 6, "more than a plan"),
    ("run {in} -o {out} --model tiny-llama --plan {tmp}/nope.json", 6, "cannot read the plan file"),
    ("run {in} -o {out} --model no-such-model", 4, "no model 'no-such-model'"),
    ("run {in} -o {out} --model {neg}", 4, "num_layers"),
    ("run {in} -o {out} --model {huge}", 4, "hidden_size"),
    ("run {in} -o {out} --model {types}", 4, "model"),
    ("run {in} -o {out} --model {nomodeltype}", 4, "config.json"),
    ("run {in} -o {out} --model {notjson}", 4, "config.json"),
    ("run {in} -o {out} --model {code}", 4, "never runs code from model files"),
    ("run {in} -o {out} --model {pickle}", 4, "never loads pickles"),
    ("run {in} -o {out} --model {tmp}/garbage.gguf", 4, "not a GGUF file"),
    ("run {in} -o {out} --model {tmp}/counts.gguf", 4, "metadata entries"),
    ("run {in} -o {out} --model tiny-llama --max-tokens 1000000000000000000000", 5, "--max-tokens"),
    ("run {in} -o {out} --model tiny-llama --seed -100000000000000000000000", 5, "--seed"),
    ("run {in} -o {out} --model tiny-llama --temperature 1e400", 5, "--temperature inf"),
    ("run {in} -o {out} --model tiny-llama --device banana", 5, "device"),
    ("run {in} -o {out} --max-tokens -1", 2, None),
    ("plan {tmp}/missing.jsonl", 2, "missing.jsonl"),
    ("plan {in} --model {neg}", 4, "num_layers"),
    ("plan {in} --model {code}", 4, "never runs code from model files"),
    ("plan {in} --model {tmp}/counts.gguf", 4, "metadata entries"),
    ("plan {in} --format xml", 2, None),  # a usage error, as every other wrong option value
    ("plan {in} --model tiny-llama --json {tmp}", 3, "cannot write the plan"),
    ("plan {in} --model tiny-llama --json {in}", 3, "is the input file"),
    ("models extra-argument", 2, None),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("line, code, says", CASES, ids=[c[0] for c in CASES])
def test_each_bad_file_is_one_error_line_and_its_exit_code(files: dict[str, Path], tmp_path: Path, line: str,
                                                            code: int, says: str | None) -> None:
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    names = {k: str(v) for k, v in files.items()}
    args = line.format(tmp=files["in"].parent, out=outdir / "out.jsonl", **names).split()
    result = runner.invoke(app, args, terminal_width=200)
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text and not isinstance(result.exception, Exception if code != 2 else ()), text
    if says is not None:
        errors = [x for x in text.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and says in errors[0], text
        assert "internal error" not in text
    assert list(outdir.iterdir()) == [], "a run that failed while starting wrote files"
    assert files["in"].read_text() == json.dumps({"id": "a", "prompt": "hello"}) + "\n"
    assert not (files["code"] / "CODE_RAN").exists()


def test_custom_code_is_refused_on_a_terminal_without_a_prompt(files: dict[str, Path], tmp_path: Path) -> None:
    """On a terminal (a pty for stdin, stdout and stderr) transformers would ask `Do you wish to run
    the custom code? [y/N]`; batchllm refuses before that, at once, and the code does not run."""
    for name in ("code",):
        d = files[name]
        (d / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Evil", None]}}))
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchllm_cli", "run", str(files["in"]), "-o", str(tmp_path / "o.jsonl"),
                 "--model", str(d)], stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert proc.wait(timeout=120) == 4
            os.close(slave)
            slave = -1
            shown = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)
        text = shown.decode(errors="replace")
        assert "never runs code from model files" in text and "[y/N]" not in text, text
        assert not (d / "CODE_RAN").exists()
        assert not (tmp_path / "o.jsonl").exists()


def test_a_second_run_on_a_locked_output_is_refused_before_reading_its_input(tmp_path: Path) -> None:
    """The CLI takes OUTPUT's lock before it reads INPUT: with the lock held elsewhere, a run whose
    input is a FIFO nobody writes to is refused (exit 3, naming the holder) instead of waiting."""
    out = tmp_path / "out.jsonl"
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom batchllm_cli.io.lock import OutputLock\n"
         "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        proc = subprocess.run([sys.executable, "-m", "batchllm_cli", "run", str(fifo), "-o", str(out), "-q"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 3, proc.stderr
    assert f"another batchllm run (pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_while_tokenizing_a_big_input_ends_the_run_within_a_second(tmp_path: Path) -> None:
    """200,000 lines: a SIGTERM once tokenizing has begun ends the process with 143 at once (the
    job stops where it is and the exit skips freeing what it had built), nothing written."""
    import select
    import signal
    import time

    inp = tmp_path / "big.jsonl"
    with open(inp, "w") as f:
        for i in range(200_000):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"Question {i}: what is the answer to this one?"}) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "batchllm_cli", "run", str(inp), "-o", str(tmp_path / "out.jsonl"),
                             "--model", "tiny-llama", "--max-tokens", "4"],
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stderr is not None
    seen, deadline = b"", time.monotonic() + 240
    while b"tokenizing" not in seen and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stderr], [], [], 0.1)[0]:
            seen += os.read(proc.stderr.fileno(), 65536)
    assert b"tokenizing" in seen, seen.decode(errors="replace")
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    took = time.monotonic() - sent
    assert code == 143 and took < 1.0, (code, took)
    assert not (tmp_path / "out.jsonl").exists()
