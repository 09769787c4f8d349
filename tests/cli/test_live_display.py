"""`batchllm run` on a terminal, as a user sees it: a pseudo-terminal drives the real command.

The live display's ETA and saved-prefix figures over a run of the sample file, a double Ctrl-C
while it runs, and a Ctrl-C while it starts."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "prompts.jsonl"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "LINES": "50", "TERM": "xterm"}
FRAME = re.compile(r"(\d+)/(\d+) requests.*?ETA (\?|\d+:\d\d:\d\d).*?prefix saved ([\d,]+) \(")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command on a pseudo-terminal: what it printed, with the time each piece arrived."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "batchllm_cli", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=ENV, cwd=ROOT, preexec_fn=_own_terminal)
        os.close(slave)
        self.master = master
        self.start = time.monotonic()
        self.chunks: list[tuple[float, str]] = []

    def read(self, until: float) -> None:
        """Collects output for `until` seconds or until the command ends."""
        end = time.monotonic() + until
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the command closed the terminal
                    return
                if not data:
                    return
                self.chunks.append((time.monotonic() - self.start, ANSI.sub("", data.decode(errors="replace"))))
            elif self.proc.poll() is not None:
                return

    def wait_for(self, pattern: str, timeout: float) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            self.read(0.1)
            if re.search(pattern, self.text):
                return time.monotonic() - self.start
        raise AssertionError(f"{pattern!r} did not show in {timeout} s:\n{self.text[-2000:]}")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the terminal turns it into SIGINT, as a keyboard's does

    def finish(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read(0.2)
        self.read(0.5)
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.text[-2000:]}")
        os.close(self.master)
        return self.proc.returncode

    @property
    def text(self) -> str:
        return "".join(c for _, c in self.chunks)

    def frames(self) -> list[tuple[float, int, int, str, int]]:
        """(time, done, total, eta, saved) of every progress frame drawn."""
        out = []
        for t, chunk in self.chunks:
            for m in FRAME.finditer(chunk):
                out.append((t, int(m[1]), int(m[2]), m[3], int(m[4].replace(",", ""))))
        return out


def _own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty (its stdin), so
    that ^C on the pty reaches it as SIGINT."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _seconds(clock: str) -> int:
    h, m, s = map(int, clock.split(":"))
    return 3600 * h + 60 * m + s


def test_eta_counts_down_to_the_end_and_the_saving_never_drops(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    term = Terminal("run", str(SAMPLE), "-o", str(out), "--max-tokens", "64")
    assert term.finish(timeout=600) == 0, term.text[-3000:]
    frames = term.frames()
    assert frames, term.text[-3000:]
    saved = [f[4] for f in frames]
    assert saved == sorted(saved), "prefix tokens saved went down"
    first, last = frames[0][0], frames[-1][0]
    tail = [f for f in frames if f[0] >= last - 0.2 * (last - first) and f[1] < f[2]]
    assert len(tail) >= 3, frames
    etas = [f[3] for f in tail]
    assert "?" not in etas, etas
    seconds = [_seconds(e) for e in etas]
    assert all(b <= a for a, b in zip(seconds, seconds[1:])), f"the ETA went up near the end: {etas}"
    assert "Traceback" not in term.text


def test_two_ctrl_c_stop_at_once_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    term = Terminal("run", str(SAMPLE), "-o", str(out), "--max-tokens", "16")
    term.wait_for(r"\d+/50 requests", timeout=300)
    term.ctrl_c()
    time.sleep(0.3)
    term.ctrl_c()
    pressed = time.monotonic()
    assert term.finish(timeout=60) == 130, term.text[-3000:]
    assert time.monotonic() - pressed < 10
    for word in ("Traceback", "Exception ignored", "KeyboardInterrupt"):
        assert word not in term.text, term.text[-3000:]
    assert "resume" in term.text


def test_ctrl_c_while_starting_stops_within_a_second_and_leaves_no_files(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    term = Terminal("run", str(SAMPLE), "-o", str(out))
    term.wait_for(r"checking the input|reading the model|tokenizing|loading the model", timeout=120)
    term.ctrl_c()
    pressed = time.monotonic()
    code = term.finish(timeout=30)
    assert time.monotonic() - pressed < 1.0 + 0.5, "Ctrl-C took more than a second to act"  # + the poll interval
    assert code == 130, term.text[-3000:]
    assert "Traceback" not in term.text and "Exception ignored" not in term.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "files left behind"
