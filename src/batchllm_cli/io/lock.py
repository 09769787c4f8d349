"""OutputLock: one `batchllm run` at a time on an output file (a lock file beside its sidecar).

The lock is an advisory `flock` on OUTPUT + ".batchllm.lock": the kernel drops it when its holder
exits in any way (kill -9 included), so a stale file never blocks a later run. The holder writes
its pid, start time and command line into the file, which is how a refused run names it. The file
is removed on release while still locked; a run that opened it just before checks, once it holds
the lock, that the path still names the file it locked, and starts over if not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any

from batchllm_cli.errors import OutputError

LOCK_SUFFIX = ".batchllm.lock"
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def lock_path(output: str | Path) -> Path:
    return Path(str(output) + LOCK_SUFFIX)


class OutputLock:
    """Holds the lock of `output` from acquire() to release() (a context manager)."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = lock_path(output)
        self._fd = -1

    def acquire(self) -> "OutputLock":
        """Takes the lock at once or raises OutputError naming the run that holds it."""
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, _OPEN_FLAGS, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise OutputError(
                        f"{self.output} is being written by another batchllm run ({holder}): wait for it "
                        "to finish, stop it, or choose another -o"
                    ) from None
                if _same_file(fd, self.path):
                    break
                os.close(fd)  # released and removed by its holder meanwhile: lock the new one
            self._fd = fd
            note = f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode("utf-8", "replace"), 0)
        except OSError as exc:
            if self._fd >= 0:
                self.release()
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{self.path} is a symbolic link: remove it (batchllm keeps its lock there)") from None
            raise OutputError(f"cannot write {self.output}: {exc.strerror or exc} ({exc.filename or self.path})") from None
        return self

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = -1

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "its pid is not known yet"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
