"""What `batchllm bench` shows while it runs, on stderr: a rich progress bar on a terminal, plain
timestamped log lines otherwise (cron, CI, `2> log`), as `run` does."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from batchllm_cli.cli.progress import LOG_EVERY_S


def make_display(console: Console, repeats: int) -> "LogDisplay | RichDisplay":
    return RichDisplay(console, repeats) if console.is_terminal else LogDisplay(console, repeats)


def _run_name(system: str, repeat: int, repeats: int) -> str:
    return f"{system} run {repeat + 1}/{repeats}"


class LogDisplay:
    """Plain lines: each phase and run, progress every LOG_EVERY_S seconds."""

    def __init__(self, console: Console, repeats: int, every_s: float = LOG_EVERY_S) -> None:
        self.console = console
        self.repeats = repeats
        self.every_s = every_s
        self._last = -float("inf")
        self._current = ""

    def note(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} batchllm bench: {text}", markup=False, highlight=False, soft_wrap=True)

    def event(self, system: str, event: str, payload: Any) -> None:
        if event == "count":
            self.note(f"{system}: counting its steps (a dry run of its scheduler)")
        elif event == "warmup":
            self.note(f"{system}: warm-up, the whole workload once (untimed)")
        elif event == "start":
            repeat, n = payload
            self._current = _run_name(system, repeat, self.repeats)
            self._last = time.monotonic()
            self.note(f"{self._current}: {n:,} requests")
        elif event == "progress":
            now = time.monotonic()
            if now - self._last >= self.every_s:
                self._last = now
                rate = payload.output_tokens / payload.elapsed_s if payload.elapsed_s > 0 else 0.0
                self.note(f"{self._current}: {payload.requests_done:,}/{payload.requests_total:,} requests, {rate:,.0f} output tok/s")
        elif event == "done":
            self.note(f"{self._current or system}: {payload.requests_per_s:.2f} requests/s in {payload.elapsed_s:.2f} s")
        elif event == "profile":
            self.note(f"{system}: one more run under the torch profiler (untimed)")

    def __enter__(self) -> "LogDisplay":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class RichDisplay:
    """A live bar per phase: warm-ups spin, timed runs count requests."""

    def __init__(self, console: Console, repeats: int) -> None:
        self.console = console
        self.repeats = repeats
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=True,
        )  # fmt: skip
        self._task: Any = None
        self._name = ""

    def note(self, text: str) -> None:
        self._progress.console.print(escape(text), highlight=False)

    def _new_task(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, rate="")

    def event(self, system: str, event: str, payload: Any) -> None:
        if event in ("count", "warmup", "profile"):
            what = {"count": "counting steps", "warmup": "warm-up (untimed)", "profile": "profiling (untimed)"}[event]
            self._new_task(f"{system}: {what}", None)
        elif event == "start":
            repeat, n = payload
            self._name = _run_name(system, repeat, self.repeats)
            self._new_task(self._name, n)
        elif event == "progress" and self._task is not None:
            rate = payload.output_tokens / payload.elapsed_s if payload.elapsed_s > 0 else 0.0
            self._progress.update(self._task, completed=payload.requests_done, rate=f"{rate:,.0f} tok/s")
        elif event == "done":
            self.note(f"{self._name or system}: {payload.requests_per_s:.2f} requests/s in {payload.elapsed_s:.2f} s")

    def __enter__(self) -> "RichDisplay":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()
