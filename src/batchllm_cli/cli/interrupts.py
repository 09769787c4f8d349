"""Ctrl-C and SIGTERM during `batchllm run`: stop soon, keep the output whole, never a traceback.

- Starting up (imports, reading the model, tokenizing, loading the weights): there is no step to
  finish, so a signal stops at once.
- Once the engine runs: the first signal asks the job to stop after the current step (the job
  polls `StopSignals.get`); a second one stops at once.
- From the moment the job acts on a stop until the process ends (the stop message, the
  interpreter's shutdown, which joins threads): a further signal ends the process at once and
  quietly. `quiet_exit_on_signals` keeps that behaviour after the command has returned.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator

NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StopNow(KeyboardInterrupt):
    """Raised by a signal that stops the command at once; cli/errors.py turns it into one line."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = EXIT_CODES[signal_name]


def _exit_now(signum: int, frame: Any) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(EXIT_CODES[NAMES[signum]])


def quiet_exit_on_signals() -> None:
    """From now on SIGINT/SIGTERM end the process at once, without a traceback."""
    for s in NAMES:
        signal.signal(s, _exit_now)


class StopSignals:
    """SIGINT/SIGTERM handling of one job (a context manager that restores the old handlers)."""

    def __init__(self) -> None:
        self.name: str | None = None  # the first stop signal received while the engine ran
        self._running = False  # the engine has made a step: a first signal waits for the next
        self._exiting = False  # the command is stopping: a further signal exits the process
        self._previous: dict[int, Any] = {}

    def get(self) -> str | None:
        """The stop signal's name once one arrived (the job then stops: it polls this)."""
        if self.name is not None:
            self._exiting = True
        return self.name

    def engine_running(self) -> None:
        self._running = True

    @contextmanager
    def at_once(self) -> Iterator[None]:
        """A stretch that cannot poll `get` (a read that may block): a signal stops it at once,
        even once the engine runs."""
        if self.name is not None:
            self._exiting = True
            raise StopNow(self.name)
        running, self._running = self._running, False
        try:
            yield
        finally:
            self._running = running

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = NAMES[signum]
        if self._exiting:
            _exit_now(signum, frame)
        if self._running and self.name is None:
            self.name = name
            return
        self._exiting = True
        raise StopNow(self.name or name)

    def __enter__(self) -> "StopSignals":
        self._previous = {s: signal.signal(s, self._on_signal) for s in NAMES}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class RunningWatch:
    """A Reporter that tells `signals` when the engine's first progress arrives, then passes
    everything on to `reporter`."""

    def __init__(self, reporter: Any, signals: StopSignals) -> None:
        self._reporter = reporter
        self._signals = signals

    def phase(self, text: str) -> None:
        self._reporter.phase(text)

    def note(self, text: str) -> None:
        self._reporter.note(text)

    def progress(self, p: Any) -> None:
        self._signals.engine_running()
        self._reporter.progress(p)
