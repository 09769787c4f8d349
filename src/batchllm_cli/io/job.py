"""run_job: one batch job from an input file to an output file, the engine behind a protocol.

Two passes over the input keep memory small: the first checks every line and collects the
keys (io/index.py, spilled to disk when large: duplicates are refused before anything is
written, and the lines the output already holds become a bitmap of one bit a line); the second
streams the lines the output does not hold yet, writing bad lines' error records at once and
handing the good ones to the backend. The backend keeps what it needs (the engine: token ids,
for global planning).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from batchllm_cli.errors import BatchLLMError, InputError, OutputError
from batchllm_cli.io.fingerprint import JobFingerprint
from batchllm_cli.io.formats import completion_record, error_record
from batchllm_cli.io.index import KeySet, LineSet, duplicates, key_of, lines_in
from batchllm_cli.io.reader import BadLine, InputRecord, Kind, LineRules, detect_rules, read_ids, read_input
from batchllm_cli.io.sinks import InOrder, RecordSink
from batchllm_cli.io.lock import OutputLock
from batchllm_cli.io.writer import (
    STDIO, OutputWriter, ResumeState, StreamWriter, inspect_output, is_output_file, scan_output,
)
from batchllm_cli.types import Completion

MAX_DUPLICATES = 50  # duplicate pairs named in one error message
# bad lines named by --strict: all of them in any file a person would fix by hand
MAX_LISTED = 1000
STOP_CHECK_EVERY = 256  # input lines between looks at should_stop while reading (well under 0.1 s)


class Backend(Protocol):
    """The engine side of a job (cli.backend.EngineBackend; tests use an echoing fake)."""

    model_name: str
    extra_requests: int  # requests beyond one per pending line (a line's n samples), after prepare

    def prepare(self, records: Iterator[tuple[InputRecord, bool]]) -> list[BadLine]:
        """Takes the job's good records with a flag "already in the output" (a stream, seen
        once); returns the pending ones the model cannot take (too long for its context)."""

    def run(self, on_progress: Callable[[Any], None]) -> Iterator[tuple[Kind, tuple[Completion, ...]]]:
        """Runs what prepare took, yielding each line's kind and Completions (one per sample, in
        sample order) once all of them finished. on_progress gets engine progress
        (requests_done, prompt_tokens, prefill_tokens, output_tokens, elapsed_s) after each step."""


class Reporter(Protocol):
    """Where a job tells what it is doing (the CLI draws it; tests may record it)."""

    def phase(self, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def progress(self, p: "JobProgress") -> None: ...


class SilentReporter:
    def phase(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def progress(self, p: "JobProgress") -> None:
        pass


@dataclass(frozen=True)
class JobOptions:
    input_path: Path
    output_path: Path
    fingerprint: JobFingerprint
    strict: bool = False  # any bad line stops the job before the model runs
    overwrite: bool = False  # start the output over instead of resuming it
    errors_path: Path | None = None  # failed lines go there (OpenAI's error file) instead of OUTPUT
    ordered: bool = False  # records in input order (io/sinks.py: held in a bounded window)
    served_models: frozenset[str] | None = None  # model names a body may name (else 404); None: any


@dataclass(frozen=True)
class JobProgress:
    """Where the model part of a job stands (this run's requests only)."""

    requests_done: int
    requests_total: int
    resumed: int  # records already in the output when the run started
    errors: int  # error records written by this run
    prompt_tokens: int
    prefill_tokens: int
    output_tokens: int
    elapsed_s: float  # since the engine started
    prefix_tokens_saved: int = 0  # the engine's: prompt tokens of completed prefills it did not compute
    prompt_left: int | None = None  # prompt tokens still to compute, when the backend knows
    output_left: int | None = None  # output tokens still allowed (max_tokens less those made), when known


@dataclass
class JobSummary:
    """What a job did; filled as it goes, final when run_job returns or raises JobInterrupted."""

    output_path: Path
    lines: int = 0  # non-blank input lines
    bad_lines: int = 0  # input lines that cannot run (parse errors; too long ones once known)
    resumed: int = 0  # records found in the output at the start
    torn_bytes: int = 0  # bytes of a torn last line cut off at the start
    requests: int = 0  # requests run by this run
    completed: int = 0  # lines answered by this run
    requests_done: int = 0  # their requests (a line with n samples is n requests)
    errors: int = 0  # error records written by this run
    prompt_tokens: int = 0
    output_tokens: int = 0
    prefix_tokens_saved: int = 0
    engine_s: float = 0.0  # time in the engine (after loading)
    wall_s: float = 0.0
    interrupted: str | None = None  # the signal's name when stopped early
    requested_models: dict[str, int] = field(default_factory=dict)  # lines of this run by body model
    answered_by: str | None = None  # the model name the responses give (known once the model is)
    held_back: int = 0  # --ordered: finished records not written yet when the job stopped
    _start: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.engine_s if self.engine_s > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        """What this run did, as JSON-ready numbers (the sidecar's "last_run")."""
        keys = ("lines", "bad_lines", "resumed", "requests", "completed", "errors", "prompt_tokens",
                "output_tokens", "prefix_tokens_saved")
        return {**{k: getattr(self, k) for k in keys}, "engine_s": round(self.engine_s, 3),
                "wall_s": round(self.wall_s, 3)}


class JobInterrupted(BatchLLMError):
    """The job stopped on a signal; finished records are in the output and it can resume."""

    exit_code = 130

    def __init__(self, signal_name: str, summary: JobSummary) -> None:
        self.signal_name = signal_name
        self.summary = summary
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
        done = summary.resumed + summary.completed + summary.errors - summary.held_back
        if summary.output_path == STDIO:
            super().__init__(f"stopped by {signal_name}: {done} finished records went to standard output")
        else:
            super().__init__(
                f"stopped by {signal_name}: {done} finished records are in {summary.output_path}; "
                "run the same command again to resume"
            )


def run_job(
    opts: JobOptions,
    backend_factory: Callable[[], Backend],
    reporter: Reporter | None = None,
    should_stop: Callable[[], str | None] = lambda: None,
    lock: OutputLock | None = None,
) -> JobSummary:
    """Runs the job of `opts`; raises InputError / OutputError / JobInterrupted (and whatever
    the backend raises) with the output left resumable. An output file is locked for the whole
    job (io/lock.py): a second job on it is refused at once. `lock`: the output's lock, already
    taken by the caller (the CLI takes it before it reads the input; check_paths first)."""
    rep = reporter or SilentReporter()
    if opts.output_path == STDIO or lock is not None:
        return _run_job(opts, backend_factory, rep, should_stop)
    check_paths(opts.input_path, opts.output_path)
    with OutputLock(opts.output_path):
        return _run_job(opts, backend_factory, rep, should_stop)


def _run_job(
    opts: JobOptions, backend_factory: Callable[[], Backend], rep: Reporter, should_stop: Callable[[], str | None]
) -> JobSummary:
    summary = JobSummary(output_path=opts.output_path)
    to_stdout = opts.output_path == STDIO

    sink: RecordSink | None = None

    def stop_check() -> None:
        name = should_stop()
        if name is not None:
            summary.interrupted = name
            summary.held_back = sink.held if sink is not None else 0  # lost: run again on resume
            raise JobInterrupted(name, _finish(summary))

    if to_stdout:
        state = ResumeState("fresh")
    else:
        state = inspect_output(opts.output_path, opts.fingerprint, opts.overwrite)
    err_state = _errors_state(opts, state)
    rules = detect_rules(opts.input_path, opts.served_models)
    rep.phase("checking the input")
    with state.done:
        pending_lines, done_lines = _check_input(opts, summary, state, stop_check, rules)
    summary.resumed, summary.torn_bytes = len(done_lines), state.torn_bytes
    if state.mode == "resume":
        rep.note(f"resuming {opts.output_path}: {summary.resumed} of {summary.lines} records are there")
    if state.repeats:
        rep.note(f"{len(state.repeats)} record(s) in {opts.output_path} repeat an earlier record's id (two runs "
                 "wrote it at once?): removed, the first of each kept")
    if state.records > summary.resumed:
        rep.note(f"{state.records - summary.resumed} record(s) in {opts.output_path} answer no line of the input")
    if state.torn_bytes:
        rep.note(f"cut {state.torn_bytes} bytes of a torn last line")

    writer_cm = StreamWriter() if to_stdout else OutputWriter(opts.output_path, state, opts.fingerprint)
    errors_cm = OutputWriter(opts.errors_path, err_state, opts.fingerprint, sidecar=False) if err_state else None
    order = InOrder(line for line, _ in read_ids(opts.input_path, rules) if line not in done_lines) if opts.ordered else None
    with writer_cm as writer, errors_cm or _Nothing() as errors:
        sink = RecordSink(writer, errors, order)
        tag = opts.fingerprint.tag
        style = "error_file" if errors is not None else "inline"
        counter = _PendingCounter()
        pairs = _pending(opts.input_path, done_lines, sink, (tag, style), summary, counter, stop_check, rules)
        rejected_count = extra = 0
        if pending_lines:
            backend = backend_factory()
            rejected = backend.prepare(pairs)
            if opts.strict and rejected:
                raise _bad_lines_error([b.describe() for b in rejected], len(rejected))
            for bad in rejected:
                sink.write(bad.line, error_record(bad, tag, style), failure=True)
            rejected_count = len(rejected)
            summary.errors += rejected_count
            summary.bad_lines += rejected_count
            extra = backend.extra_requests
            stop_check()

            def on_progress(p: Any) -> None:
                summary.requests = counter.good - rejected_count + extra
                summary.engine_s = p.elapsed_s
                summary.prefix_tokens_saved = p.prefix_tokens_saved
                rep.progress(
                    JobProgress(p.requests_done, summary.requests, summary.resumed, summary.errors,
                                p.prompt_tokens, p.prefill_tokens, p.output_tokens, p.elapsed_s,
                                p.prefix_tokens_saved, getattr(p, "prompt_left", None), getattr(p, "output_left", None))
                )
                stop_check()

            # the name a response says answered: the first served name (as vLLM's), else the model's
            answered_by = summary.answered_by = min(opts.served_models) if opts.served_models else backend.model_name
            for kind, completions, line in backend.run(on_progress):
                sink.write(line, completion_record(kind, completions, answered_by, tag), failure=False)
                summary.completed += 1
                summary.requests_done += len(completions)
                summary.prompt_tokens += sum(c.prompt_tokens for c in completions)  # as the engine counts
                summary.output_tokens += sum(c.completion_tokens for c in completions)
        for _ in pairs:  # a backend that stopped reading early: the remaining bad lines' records
            pass
        summary.requests = counter.good - rejected_count + extra
        stop_check()
        sink.finish()
        sink.close()
        if errors is not None:
            errors.close(complete=True)
        writer.close(complete=True, last_run=_finish(summary).figures())
    return summary


class _Nothing:
    """A context manager that stands for a file that is not written (no --errors)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        pass


def _errors_state(opts: JobOptions, state: ResumeState) -> ResumeState | None:
    """Where the --errors file starts: fresh with a fresh OUTPUT, else its finished records (their
    keys join `state.done`, so that resume skips the lines they answer)."""
    path = opts.errors_path
    if path is None:
        return None
    if path == STDIO or path.resolve() == opts.output_path.resolve():
        raise OutputError(f"--errors {path} must be a file other than the output")
    if state.mode == "fresh" or not path.exists():
        if path.exists() and path.stat().st_size and not opts.overwrite and state.mode == "fresh":
            raise OutputError(f"--errors {path} exists and OUTPUT starts fresh: use --overwrite to replace it")
        return ResumeState("fresh")
    err = scan_output(path)
    state.done.update(err.done)
    err.done.close()
    return err


def _finish(summary: JobSummary) -> JobSummary:
    summary.wall_s = time.perf_counter() - summary._start
    return summary


def check_paths(input_path: Path, output_path: Path) -> None:
    """OutputError when the output is a directory, or the input is the output or any file
    batchllm writes for it (the sidecar, the lock, temp files): before anything is touched."""
    if output_path.is_dir():
        raise OutputError(f"output {output_path} is a directory: give a file path")
    if input_path == STDIO or not is_output_file(input_path, output_path):
        return
    if input_path.name == output_path.name:
        raise OutputError(f"the output {output_path} is the input file: choose another -o")
    raise OutputError(
        f"the input {input_path} is a file batchllm writes for the output {output_path} "
        "(it would be replaced): copy it elsewhere or choose another -o"
    )


def _check_input(
    opts: JobOptions, summary: JobSummary, state: ResumeState, stop_check: Callable[[], None], rules: LineRules,
) -> tuple[int, LineSet]:
    """Pass 1: refuses duplicate ids, and (--strict) any bad line, before anything is written.
    Returns how many lines the output does not hold yet, and the lines it holds."""
    listed: list[str] = []
    bad = last_line = 0
    with KeySet() as keys:
        if opts.strict:
            for rec in read_input(opts.input_path, rules):
                keys.add(key_of(rec.id, rec.line), rec.line)
                last_line = rec.line
                if len(keys) % STOP_CHECK_EVERY == 0:
                    stop_check()
                if isinstance(rec, BadLine):
                    bad += 1
                    if len(listed) < MAX_LISTED:
                        listed.append(rec.describe())
        else:
            for line, rid in read_ids(opts.input_path, rules):
                keys.add(key_of(rid, line), line)
                last_line = line
                if len(keys) % STOP_CHECK_EVERY == 0:
                    stop_check()
        summary.lines = len(keys)
        dups, count = duplicates(keys, limit=MAX_DUPLICATES)
        if dups:
            shown = "; ".join(f"line {b} repeats the id of line {a}" for a, b in dups)
            tail = f" (and {count - len(dups)} more)" if count > len(dups) else ""
            raise InputError(f"duplicate ids: {shown}{tail}; every id must be unique")
        if bad:
            raise _bad_lines_error(listed, bad)
        stop_check()
        done_lines = lines_in(keys, state.done, last_line)
    # resume counts distinct input lines answered, not records (those may repeat an id)
    return summary.lines - len(done_lines), done_lines


def _bad_lines_error(listed: list[str], total: int) -> InputError:
    more = f"\n  ... and {total - len(listed)} more (run without --strict for a record of each)" if total > len(listed) else ""
    body = "\n  ".join(listed[:MAX_LISTED])
    return InputError(f"{total} bad input line(s) (--strict: nothing was run):\n  {body}{more}")


@dataclass
class _PendingCounter:
    good: int = 0


MAX_MODELS_COUNTED = 32  # distinct body model names counted for the summary (then "others")


def _pending(
    path: Path, done_lines: LineSet, sink: RecordSink, tag_style: tuple[str, Any], summary: JobSummary,
    counter: _PendingCounter, stop_check: Callable[[], None], rules: LineRules,
) -> Iterator[tuple[InputRecord, bool]]:
    """Pass 2: (good record, already done) pairs; bad lines get their error record on the way."""
    models = summary.requested_models
    for i, rec in enumerate(read_input(path, rules), 1):
        if i % STOP_CHECK_EVERY == 0:
            stop_check()
        done = rec.line in done_lines
        if isinstance(rec, BadLine):
            summary.bad_lines += 1
            if not done:
                sink.write(rec.line, error_record(rec, *tag_style), failure=True)
                summary.errors += 1
        else:
            counter.good += not done
            if rec.model is not None and not done:
                name = rec.model if rec.model in models or len(models) < MAX_MODELS_COUNTED else "others"
                models[name] = models.get(name, 0) + 1
            yield rec, done
