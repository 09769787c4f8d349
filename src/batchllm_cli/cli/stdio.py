"""`-` as a path: standard input for INPUT, standard output for `-o` (pipelines); and inputs that
can be read only once (a pipe, a FIFO, /dev/stdin, process substitution), copied first."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from batchllm_cli.errors import InputError
from batchllm_cli.io.index import remove_stale_spills
from batchllm_cli.io.writer import STDIO

STDIN_NAME = "standard input"
SPOOL_PREFIX = "batchllm-stdin-"  # + owner pid + "-" + random: a private folder per spool
SPOOL_FILE = "input.jsonl"


@contextmanager
def input_file(path: Path) -> Iterator[tuple[Path, str]]:
    """(file to read, name to show). The job reads its input twice (checks, then work) and its
    fingerprint hashes the content, so an input that cannot be read twice (`-`, a pipe, a FIFO,
    any file that is not a regular file) is copied to a private temporary file first: piping the
    same lines again into the same `-o FILE` resumes. The copy is removed on exit, or by the next
    batchllm that starts after a kill -9."""
    remove_stale_spills(prefix=SPOOL_PREFIX)
    if path == STDIO:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError(
                "INPUT `-` reads the prompts from standard input, but it is a terminal: pipe a JSONL "
                "file in, e.g. `cat prompts.jsonl | batchllm run - -o out.jsonl`"
            )
        with _spooled(sys.stdin.buffer) as spool:
            yield spool, STDIN_NAME
        return
    _refuse_a_spool(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        yield path, str(path)  # missing or unreadable: the reader says so, naming the file
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        yield path, str(path)
        return
    try:
        source = open(path, "rb")  # a FIFO waits here for its writer (a signal still stops it)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with source, _spooled(source) as spool:
        yield spool, str(path)


@contextmanager
def _spooled(source: BinaryIO) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))  # mode 0700: private
    try:
        spool = folder / SPOOL_FILE
        with open(spool, "xb") as f:
            try:
                shutil.copyfileobj(source, f, 1 << 20)
            except OSError as exc:
                raise InputError(f"cannot read the input: {exc.strerror or exc}") from None
        yield spool
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _refuse_a_spool(path: Path) -> None:
    try:
        parent = path.resolve().parent
    except OSError:
        return
    if parent.name.startswith(SPOOL_PREFIX) and parent.parent == Path(tempfile.gettempdir()).resolve():
        raise InputError(f"{path} is a temporary copy batchllm made of an input (removed when its run ends): "
                         "give the original input")
