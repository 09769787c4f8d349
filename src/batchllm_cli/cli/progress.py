"""Job progress on stderr: a rich display on a terminal, periodic log lines otherwise (cron).

Both are io.job.Reporter implementations; `make_reporter` picks one (or none for --quiet).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from batchllm_cli.io.job import JobProgress, SilentReporter

LOG_EVERY_S = 10.0  # seconds between plain progress lines: frequent enough for a log, not noisy
ETA_WINDOW_S = 30.0  # the requests finished in this much recent engine time set the ETA's pace


class Eta:
    """Time left at the recent pace: requests finished over the last ETA_WINDOW_S seconds (over
    the whole run until it is that long). A batch finishes requests in waves and slows down as it
    drains at the end, where the whole-run average would read low; "?" while nothing finished in
    the window."""

    def __init__(self, window_s: float = ETA_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()  # (elapsed_s, requests_done)

    def __call__(self, p: JobProgress) -> str:
        if p.requests_total and p.requests_done >= p.requests_total:
            return _clock(0.0)
        self._samples.append((p.elapsed_s, p.requests_done))
        while len(self._samples) > 1 and p.elapsed_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()  # keep one sample at least a window old
        start_s, start_done = self._samples[0]
        if p.elapsed_s - start_s < self.window_s:
            start_s, start_done = 0.0, 0
        done, span = p.requests_done - start_done, p.elapsed_s - start_s
        if done <= 0 or span <= 0:
            return "?"
        return _clock((p.requests_total - p.requests_done) * span / done)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _rate(p: JobProgress) -> float:
    return p.output_tokens / p.elapsed_s if p.elapsed_s > 0 else 0.0


def _saved(p: JobProgress) -> str:
    share = p.prefix_tokens_saved / p.prompt_tokens if p.prompt_tokens else 0.0
    return f"{p.prefix_tokens_saved:,} ({share:.0%})"


class LogReporter:
    """Plain timestamped lines: each phase, then progress every LOG_EVERY_S seconds."""

    def __init__(self, console: Console, every_s: float = LOG_EVERY_S) -> None:
        self.console = console
        self.every_s = every_s
        self._last = -float("inf")
        self._pending: JobProgress | None = None
        self._eta = Eta()

    def _line(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} batchllm: {text}", markup=False, highlight=False, soft_wrap=True)

    def phase(self, text: str) -> None:
        self._line(text)

    def note(self, text: str) -> None:
        self._line(text)

    def progress(self, p: JobProgress) -> None:
        now = time.monotonic()
        self._pending = p
        if now - self._last >= self.every_s or p.requests_done == p.requests_total:
            self._last = now
            self._pending = None
            self._line(
                f"{p.requests_done}/{p.requests_total} requests, {p.output_tokens:,} output tokens "
                f"({_rate(p):.1f}/s), ETA {self._eta(p)}, prefix tokens saved {_saved(p)}"
            )

    def __enter__(self) -> "LogReporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class RichReporter:
    """A live progress bar: requests done/total, output tokens/s, ETA, prefix tokens saved."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),  # empty until the number of requests is known
            TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("prefix saved {task.fields[saved]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("starting", total=None, count="", rate="-", eta="?", saved="-")
        self._eta = Eta()

    def phase(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def note(self, text: str) -> None:
        self._progress.console.print(f"[dim]{text}[/]", highlight=False)

    def progress(self, p: JobProgress) -> None:
        self._progress.update(
            self._task, completed=p.requests_done, total=p.requests_total,
            count=f"{p.requests_done}/{p.requests_total} requests", rate=f"{_rate(p):.1f}", eta=self._eta(p), saved=_saved(p),
        )

    def __enter__(self) -> "RichReporter":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()


def make_reporter(console: Console, quiet: bool) -> Any:
    """The reporter for this terminal: none with --quiet, rich on a TTY, log lines otherwise."""
    if quiet:
        return _NullContext()
    if console.is_terminal:
        return RichReporter(console)
    return LogReporter(console)


class _NullContext(SilentReporter):
    def __enter__(self) -> "_NullContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
