"""The output writer: whole-line appends, the sidecar fingerprint, resume and torn-line repair.

Crash safety: each record is one `os.write` of its line and newline on an O_APPEND descriptor,
so the kernel holds it as soon as the request finishes and a killed process loses at most the
line being written. On the next run that torn tail (anything after the last whole, parseable
line) is cut off and the finished records' keys are skipped; a record whose key an earlier one
already has (two runs wrote the file at once, before the lock of io/lock.py) is dropped.

Nothing is touched before the first record is written (or the job completes with none): a run
that fails while starting leaves an old output as it was and makes no new files. Then, in this
order: the old output is truncated (--overwrite, or a fresh start), the new sidecar is written
(a private temp file, then renamed over it), records are appended. A crash between any two steps
leaves an empty output, which the next run starts fresh whatever the sidecar says.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from batchllm_cli.errors import OutputError
from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.formats import dumps_line, record_key
from batchllm_cli.io.index import KeySet, repeated_lines

SIDECAR_SUFFIX = ".batchllm.json"
SIDECAR_MODE = 0o644  # readable by others, like the output beside it
STDIO = Path("-")  # an input or output path of "-": standard input / standard output
# An output line holds one request's text (at most a context of tokens): 64 MiB is far above it.
MAX_OUTPUT_LINE_BYTES = 64 * 2**20
FSYNC_EVERY_S = 5.0  # bounds what a power cut can take; a killed process loses nothing written
CLOCK_EVERY = 64  # records between looks at the clock (a look costs as much as a small write)


def sidecar_path(output: str | Path) -> Path:
    return Path(str(output) + SIDECAR_SUFFIX)


@dataclass
class ResumeState:
    """What an existing output holds: where its whole lines end and which records they are."""

    mode: Literal["fresh", "resume"]
    done: KeySet = field(default_factory=KeySet)  # keys of the finished records (close() it)
    records: int = 0  # finished records found (distinct keys)
    keep_bytes: int = 0  # the file is cut to this length before appending
    torn_bytes: int = 0  # bytes dropped after the last whole line
    repeats: list[int] = field(default_factory=list)  # 1-based records that repeat an earlier key


def inspect_output(output: str | Path, fingerprint: JobFingerprint, overwrite: bool) -> ResumeState:
    """Decides, without writing, whether `output` starts fresh or resumes; OutputError if neither."""
    out = Path(output)
    if out.is_dir():
        raise OutputError(f"output {out} is a directory: give a file path")
    if overwrite or not out.exists() or out.stat().st_size == 0:
        return ResumeState("fresh")
    side = sidecar_path(out)
    hint = "use --overwrite to replace it, or choose another -o"
    try:
        saved = JobFingerprint.from_dict(orjson.loads(side.read_bytes()))
    except FileNotFoundError:
        raise OutputError(f"{out} exists and {side.name} is not beside it (not made by batchllm run): {hint}") from None
    except (orjson.JSONDecodeError, OutputError, OSError) as exc:
        raise OutputError(f"cannot read {side}: {exc}: {hint}") from None
    state = scan_output(out)
    diff = fingerprint.differences(saved)
    if not diff:
        return state
    state.done.close()
    if state.records:
        raise OutputError(f"{out} was made from other input or settings ({'; '.join(diff)}): {hint}")
    return ResumeState("fresh")  # ours, with nothing finished to keep


def scan_output(out: Path) -> ResumeState:
    """The finished records of an existing output, and where its last whole line ends."""
    state = ResumeState("resume")
    offset = lines = 0
    try:
        with open(out, "rb") as f:
            while True:
                raw = f.readline(MAX_OUTPUT_LINE_BYTES)
                if not raw.endswith(b"\n"):
                    break  # end of file, or a torn last line
                key = _key_of_line(raw)
                if key is None:
                    break  # not a whole record: cut here, what follows is run again
                lines += 1
                state.done.add(key, lines)
                offset += len(raw)
            size = out.stat().st_size
    except OSError as exc:
        state.done.close()
        raise OutputError(f"cannot read {out}: {exc.strerror or exc}") from None
    state.repeats = repeated_lines(state.done).tolist()
    state.records = lines - len(state.repeats)
    state.keep_bytes, state.torn_bytes = offset, size - offset
    return state


def _key_of_line(raw: bytes) -> bytes | None:
    try:
        return record_key(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


class OutputWriter:
    """Appends output records to a file, one whole flushed line each; a context manager.

    The file is opened (truncated when fresh, repaired when resumed) at the first record."""

    def __init__(self, output: str | Path, state: ResumeState, fingerprint: JobFingerprint,
                 sidecar: bool = True) -> None:
        self._fd = -1
        self.path = Path(output)
        self.fingerprint = fingerprint
        self.sidecar = sidecar  # False: a file that belongs to OUTPUT's job (--errors)
        self.records = state.records  # records in the file, earlier runs included
        self._state = state
        self._last_sync = time.monotonic()

    def _open(self) -> None:
        state = self._state
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if state.mode == "fresh":
                # the old records go first: no moment where the new sidecar sits beside them
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
                self._write_sidecar(complete=False)
                return
            if state.repeats:
                _drop_records(self.path, state.keep_bytes, state.repeats)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            if state.torn_bytes and not state.repeats:
                os.ftruncate(self._fd, state.keep_bytes)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record as one line; it is in the file when this returns."""
        data = dumps_line(record)
        if self._fd < 0:
            self._open()
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # rare for regular files; finish the line before anything else
                rest = memoryview(data)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
            self.records += 1
            if self.records % CLOCK_EVERY == 0 and time.monotonic() - self._last_sync > FSYNC_EVERY_S:
                os.fsync(self._fd)
                self._last_sync = time.monotonic()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self, complete: bool, last_run: dict[str, Any] | None = None) -> None:
        """Syncs the file; marks the sidecar complete when the job finished, with the figures
        of the run that finished it (`last_run`), for scripts."""
        if complete and self._fd < 0:
            self._open()  # a job that wrote nothing still ends with its (empty) output
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1
        if complete:
            self._write_sidecar(complete=True, last_run=last_run)

    def _write_sidecar(self, complete: bool, last_run: dict[str, Any] | None = None) -> None:
        if not self.sidecar:
            return
        side = sidecar_path(self.path)
        doc = {**self.fingerprint.to_dict(), "complete": complete, "records": self.records}
        if last_run is not None:
            doc["last_run"] = last_run
        try:
            _replace_file(side, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        except OSError as exc:
            raise OutputError(f"cannot write {side}: {exc.strerror or exc}") from None

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(complete=False)


def _replace_file(path: Path, data: bytes) -> None:
    """Writes `data` to a new private temp file beside `path` (O_EXCL, random name: no symlink is
    followed) and renames it over `path` (a symlink there is replaced, not followed)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, SIDECAR_MODE)  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _drop_records(path: Path, keep_bytes: int, repeats: list[int]) -> None:
    """Rewrites `path` without the records numbered in `repeats` (1-based) and without anything
    after `keep_bytes`: a copy in a private temp file, synced, then renamed over the output."""
    drop = set(repeats)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".batchllm-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
            offset = number = 0
            while offset < keep_bytes:
                raw = src.readline(MAX_OUTPUT_LINE_BYTES)
                offset += len(raw)
                number += 1
                if number not in drop:
                    dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def output_files(output: str | Path) -> tuple[Path, ...]:
    """The files batchllm writes for `output`, temp files aside (see is_output_file)."""
    from batchllm_cli.io.lock import lock_path

    return (Path(output), sidecar_path(output), lock_path(output))


def is_output_file(path: str | Path, output: str | Path) -> bool:
    """Whether `path` is `output` or a file batchllm writes beside it for it: the sidecar, the
    lock, or a temp file (named OUTPUT.batchllm-*.tmp or OUTPUT.batchllm.json.*.tmp)."""
    path, out = Path(path), Path(output)
    try:
        if path.exists() and any(f.exists() and os.path.samefile(path, f) for f in output_files(out)):
            return True
        same_dir = path.parent.resolve() == out.parent.resolve()
    except OSError:
        return False
    return same_dir and path.name.startswith(out.name + ".batchllm") and (
        path.name.endswith(".tmp") or path.name in {f.name for f in output_files(out)}
    )


class StreamWriter:
    """Writes output records to standard output (`-o -`), one whole line each, for pipelines:
    no sidecar and no resume (a stream cannot be read back); the same interface as OutputWriter."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self.path = STDIO
        self.records = 0

    def write(self, record: dict[str, Any]) -> None:
        rest = memoryview(dumps_line(record))
        try:
            while rest:
                rest = rest[os.write(self._fd, rest) :]
        except BrokenPipeError:
            raise OutputError("standard output was closed before the job finished (the reader went away)") from None
        except OSError as exc:
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None
        self.records += 1

    def close(self, complete: bool, last_run: dict[str, Any] | None = None) -> None:
        pass  # nothing to sync or mark: the reader has every line already

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
