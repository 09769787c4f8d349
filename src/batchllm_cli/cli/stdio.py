"""`-` as a path: standard input for INPUT, standard output for `-o` (pipelines)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from batchllm_cli.errors import InputError
from batchllm_cli.io.writer import STDIO

STDIN_NAME = "standard input"


@contextmanager
def input_file(path: Path) -> Iterator[tuple[Path, str]]:
    """(file to read, name to show). `-` copies standard input to a temporary file first: the
    job reads its input twice (checks, then work) and its fingerprint hashes the content, so
    piping the same lines again into the same `-o FILE` resumes."""
    if path != STDIO:
        yield path, str(path)
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError(
            "INPUT `-` reads the prompts from standard input, but it is a terminal: pipe a JSONL "
            "file in, e.g. `cat prompts.jsonl | batchllm run - -o out.jsonl`"
        )
    fd, name = tempfile.mkstemp(prefix="batchllm-stdin-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        yield Path(name), STDIN_NAME
    finally:
        os.unlink(name)
