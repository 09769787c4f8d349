"""Where a job's records go: OUTPUT, failures to the --errors file, in input order (--ordered).

RecordSink takes each record with its input line and whether it is a failure. Without --ordered
a record is written as it comes (completion order). With it, records wait in InOrder until every
earlier pending line has its record, so both files are in input order, in bounded memory:

- records of the lines near the write head (its bucket of BUCKET_LINES lines) are held in memory;
- records of later lines are held too, up to WINDOW of them; past that they are spilled to one
  temporary file per bucket, and a bucket's file is read back when the write head reaches it.

A slow request holds the head: everything after it waits (in memory, then on disk) until it
finishes, and the output does not grow meanwhile. A killed run loses the held records (they are
run again on resume; the output holds the answered lines in input order either way).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Protocol

import orjson

from batchllm_cli.io.index import remove_stale_spills

BUCKET_LINES = 1024  # input lines per spill bucket (held in memory while the head is in it)
WINDOW = 4096  # records of later buckets held in memory before they are spilled
SPILL_PREFIX = "batchllm-order-"  # + owner pid + "-" + random (see index.remove_stale_spills)


class Writer(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...


class InOrder:
    """Releases (line, failure, record) items in the order of `lines` (every pending line, in
    input order: each gets exactly one item)."""

    def __init__(self, lines: Iterator[int], window: int = WINDOW, bucket_lines: int = BUCKET_LINES) -> None:
        self._lines = lines
        self._window, self._bucket_lines = window, bucket_lines
        self._head: int | None = next(lines, None)  # the next line to release
        self._near: dict[int, tuple[bool, dict[str, Any]]] = {}  # lines of the head's bucket (or before)
        self._far: dict[int, tuple[bool, dict[str, Any]]] = {}  # later lines, at most `window`
        self._dir: Path | None = None  # spill files, one per bucket: "<bucket>"
        self.spilled = 0  # records written to spill files (for tests and reports)
        self.held = 0  # records taken and not released yet

    def add(self, line: int, failure: bool, record: dict[str, Any]) -> Iterator[tuple[bool, dict[str, Any]]]:
        """Takes one item; yields the (failure, record) items that can be written now, in order."""
        self.held += 1
        if self._head is not None and self._bucket(line) > self._bucket(self._head):
            self._far[line] = (failure, record)
            if len(self._far) > self._window:
                self._spill()
            return
        self._near[line] = (failure, record)
        while self._head is not None and self._head in self._near:
            self.held -= 1
            yield self._near.pop(self._head)
            self._advance()

    def _advance(self) -> None:
        old = self._bucket(self._head)  # type: ignore[arg-type]
        self._head = next(self._lines, None)
        if self._head is None or self._bucket(self._head) == old:
            return
        bucket = self._bucket(self._head)
        for line in [x for x in self._far if self._bucket(x) <= bucket]:
            self._near[line] = self._far.pop(line)
        if self._dir is not None:
            path = self._dir / str(bucket)
            if path.exists():
                with open(path, "rb") as f:
                    for raw in f:
                        line, failure, record = orjson.loads(raw)
                        self._near[line] = (failure, record)
                path.unlink()

    def _spill(self) -> None:
        if self._dir is None:
            remove_stale_spills(prefix=SPILL_PREFIX)
            self._dir = Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-"))
        by_bucket: dict[int, list[bytes]] = {}
        for line, (failure, record) in self._far.items():
            by_bucket.setdefault(self._bucket(line), []).append(
                orjson.dumps([line, failure, record], option=orjson.OPT_APPEND_NEWLINE))
        for bucket, rows in by_bucket.items():
            with open(self._dir / str(bucket), "ab") as f:
                f.write(b"".join(rows))
        self.spilled += len(self._far)
        self._far.clear()

    def _bucket(self, line: int) -> int:
        return line // self._bucket_lines

    def leftovers(self) -> Iterator[tuple[bool, dict[str, Any]]]:
        """What is still held, in line order (empty after a whole job: every line came)."""
        held = {**self._far, **self._near}
        if self._dir is not None:
            for path in self._dir.iterdir():
                for raw in path.read_bytes().splitlines():
                    line, failure, record = orjson.loads(raw)
                    held[line] = (failure, record)
        self._near, self._far = {}, {}
        self.held = 0
        for line in sorted(held):
            yield held[line]

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class RecordSink:
    """Writes a job's records: failures to `errors` when given (else to `output`), successes to
    `output`; through InOrder when `order` is given.

    Failure records (bad lines) are held, up to MAX_HELD, until the first success or finish():
    a job that fails while starting (a plan of another input, weights that do not load) then
    leaves its output as it was, --overwrite included."""

    MAX_HELD = 4096

    def __init__(self, output: Writer, errors: Writer | None = None, order: InOrder | None = None) -> None:
        self.output, self.errors, self.order = output, errors, order
        self._held: list[dict[str, Any]] | None = []

    def write(self, line: int, record: dict[str, Any], failure: bool) -> None:
        if self.order is None:
            self._put(failure, record)
            return
        for item in self.order.add(line, failure, record):
            self._put(*item)

    @property
    def held(self) -> int:
        """Records taken and not written yet (waiting for an earlier line, or held failures)."""
        return (0 if self.order is None else self.order.held) + len(self._held or ())

    def _put(self, failure: bool, record: dict[str, Any]) -> None:
        if self._held is not None:
            if failure and len(self._held) < self.MAX_HELD:
                self._held.append(record)
                return
            self._release()
        (self.errors if failure and self.errors is not None else self.output).write(record)

    def _release(self) -> None:
        held, self._held = self._held or [], None
        for record in held:
            self._put(True, record)

    def finish(self) -> None:
        """Writes whatever InOrder still holds (nothing, when every pending line got a record),
        and the held failure records."""
        if self.order is not None:
            for item in self.order.leftovers():
                self._put(*item)
        self._release()

    def close(self) -> None:
        if self.order is not None:
            self.order.close()
