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
ETA_WINDOW_S = 10.0  # the steps of this much recent engine time set the ETA's pace
# How the shown ETA follows the model: it counts down by itself and moves this share of the way to
# the model's figure at each report (less when the model says later: one slow step, a moment of
# load on a shared machine, should not throw the figure back), so that noise barely shows.
ETA_FOLLOW_DOWN, ETA_FOLLOW_UP = 0.3, 0.1


class Eta:
    """Time left from a model of the work left: JobProgress.prompt_left and output_left (prompt
    tokens still to compute, output tokens still allowed) at the recent cost of each kind.

    The costs are fitted to the recent reports (elapsed = a * prompt tokens computed + b * output
    tokens, least squares over the last ETA_WINDOW_S): prefill and decode cost very differently a
    token, and as a batch drains at the end each output token costs more, which the recent fit
    sees. Without them (a backend that does not know), requests left at the recent pace of
    finished requests. "?" until a pace is known."""

    def __init__(self, window_s: float = ETA_WINDOW_S) -> None:
        self.window_s = window_s
        self._last: JobProgress | None = None
        self._steps: deque[tuple[float, float, float, float]] = deque()  # (at, seconds, prompt, output)
        self._cost = (0.0, 0.0)  # seconds per prompt token, per output token (the last fit)
        self._shown: tuple[float, float] | None = None  # (seconds left shown, at elapsed_s)

    def seconds(self, p: JobProgress) -> float | None:
        """The ETA in seconds, None while unknown."""
        if p.requests_total and p.requests_done >= p.requests_total:
            return 0.0
        last, self._last = self._last, p
        if last is not None and p.elapsed_s > last.elapsed_s:
            if p.output_left is None:  # one "token" a finished request
                self._steps.append((p.elapsed_s, p.elapsed_s - last.elapsed_s, 0.0, p.requests_done - last.requests_done))
            else:
                self._steps.append((p.elapsed_s, p.elapsed_s - last.elapsed_s, p.prefill_tokens - last.prefill_tokens,
                                    p.output_tokens - last.output_tokens))
        while self._steps and p.elapsed_s - self._steps[0][0] > self.window_s:
            self._steps.popleft()
        self._fit()
        a, b = self._cost
        if p.output_left is None:
            left = b * (p.requests_total - p.requests_done) if b > 0 else None
        else:
            left = a * (p.prompt_left or 0) + b * p.output_left if b > 0 else None
        if left is None:
            return None if self._shown is None else self._countdown(p.elapsed_s)
        if self._shown is not None:
            ahead = self._countdown(p.elapsed_s)
            left = ahead + (ETA_FOLLOW_DOWN if left < ahead else ETA_FOLLOW_UP) * (left - ahead)
        self._shown = (left, p.elapsed_s)
        return left

    def _fit(self) -> None:
        """Least squares of seconds = a * prompt + b * output over the window (a, b >= 0)."""
        spp = spo = soo = spt = sot = 0.0
        for _, dt, dp, do in self._steps:
            spp, spo, soo, spt, sot = spp + dp * dp, spo + dp * do, soo + do * do, spt + dp * dt, sot + do * dt
        det = spp * soo - spo * spo
        if det > 1e-9 * max(1.0, spp * soo):
            a, b = (spt * soo - sot * spo) / det, (sot * spp - spt * spo) / det
            if a >= 0 and b >= 0:
                self._cost = (a, b)
                return
        if soo > 0:  # decode only (or a fit that went negative): all the time on the output tokens
            self._cost = (self._cost[0], sot / soo)
        elif spp > 0:
            self._cost = (spt / spp, self._cost[1])

    def _countdown(self, elapsed_s: float) -> float:
        assert self._shown is not None
        shown, at = self._shown
        return max(0.0, shown - (elapsed_s - at))

    def __call__(self, p: JobProgress) -> str:
        seconds = self.seconds(p)
        return "?" if seconds is None else _clock(seconds)


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
        eta = self._eta(p)  # every report feeds the ETA's fit, printed or not
        if now - self._last >= self.every_s or p.requests_done == p.requests_total:
            self._last = now
            self._pending = None
            self._line(
                f"{p.requests_done}/{p.requests_total} requests, {p.output_tokens:,} output tokens "
                f"({_rate(p):.1f}/s), ETA {eta}, prefix tokens saved {_saved(p)}"
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
