"""KeySet: a job's record keys in bounded memory, for duplicate ids and resume.

A key names one output record: the request's id, or the line number of a bad line whose id
could not be read. Each key is kept as a 128-bit BLAKE2 digest (collisions are out of reach at
any job size) with the input line it came from: 20 bytes an entry. Up to MEMORY_ENTRIES entries
stay in memory; beyond that they are spilled to NUM_PARTITIONS temporary files, split by
digest, so that checking a million-line job holds one partition at a time (about 1/64 of its
keys) instead of all of them. A spill folder left by a killed process is removed by the next
process that spills. Two sets are compared partition by partition (the same digest
always lands in the same partition).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

DIGEST_BYTES = 16
NUM_PARTITIONS = 64  # a power of two: the partition is the digest's first byte, masked
MEMORY_ENTRIES = 2**16  # kept in memory before spilling (1.3 MB): most jobs never spill
BUFFER_BYTES = 16 * 2**10  # per-partition write buffer once spilled (64 x 16 KiB = 1 MiB)
_MASK = NUM_PARTITIONS - 1
SPILL_PREFIX = "batchllm-keys-"  # + owner pid + "-" + random: see remove_stale_spills
_ENTRY = struct.Struct("<16sI")  # digest, 1-based line
ENTRY_DTYPE = np.dtype([("hi", ">u8"), ("lo", ">u8"), ("line", "<u4")])  # 20 bytes, packed


def key_of(record_id: str | int | None, line: int) -> bytes:
    """The key of a record: its id when it has one (an integer id is another key than the
    same digits as text), else its 1-based input line number."""
    if isinstance(record_id, str):
        return b"i" + record_id.encode("utf-8", "surrogatepass")
    if record_id is not None:
        return b"n%d" % record_id
    return b"l%d" % line


def _digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=DIGEST_BYTES).digest()


class KeySet:
    """An append-only multiset of keys with the line of each; a context manager (close() removes
    the spill files)."""

    def __init__(self, memory_entries: int | None = None) -> None:
        self._memory_bytes = (memory_entries or MEMORY_ENTRIES) * _ENTRY.size
        self._entries = bytearray()  # in memory: [n * 20] entries in insertion order
        self._dir: Path | None = None  # once spilled: partition p lives in file "p"
        self._buffers: list[bytearray] = []  # once spilled: entries not yet in their file
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def spilled(self) -> bool:
        return self._dir is not None

    def add(self, key: bytes, line: int) -> None:
        self._add_digest(_digest(key), line)

    def update(self, other: "KeySet") -> None:
        """Adds every entry of `other` (e.g. the records of a second output file)."""
        for p in range(NUM_PARTITIONS):
            for hi, lo, line in other.partition(p).tolist():
                self._add_digest(struct.pack(">QQ", hi, lo), line)

    def _add_digest(self, digest: bytes, line: int) -> None:
        entry = _ENTRY.pack(digest, line)
        self._count += 1
        if self._dir is None:
            self._entries += entry
            if len(self._entries) >= self._memory_bytes:
                self._spill()
            return
        buffer = self._buffers[digest[0] & _MASK]
        buffer += entry
        if len(buffer) >= BUFFER_BYTES:
            self._flush(digest[0] & _MASK)

    def partition(self, p: int) -> np.ndarray:
        """The entries of partition p (ENTRY_DTYPE), in insertion order."""
        if self._dir is None:
            entries = np.frombuffer(self._entries, dtype=ENTRY_DTYPE)
            return entries[_partition_of(entries) == p]
        path = self._dir / str(p)
        data = path.read_bytes() if path.exists() else b""
        return np.frombuffer(data + bytes(self._buffers[p]), dtype=ENTRY_DTYPE)

    def __contains__(self, key: bytes) -> bool:
        """Exact membership (loads one partition: for checks, not for a loop over a job)."""
        digest = _digest(key)
        part = self.partition(digest[0] & _MASK)
        hi, lo = struct.unpack(">QQ", digest)
        return bool(np.any((part["hi"] == hi) & (part["lo"] == lo)))

    def _spill(self) -> None:
        remove_stale_spills()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-"))
        self._buffers = [bytearray() for _ in range(NUM_PARTITIONS)]
        entries = np.frombuffer(self._entries, dtype=ENTRY_DTYPE)
        parts = _partition_of(entries)
        for p in range(NUM_PARTITIONS):
            (self._dir / str(p)).write_bytes(entries[parts == p].tobytes())
        del entries, parts
        self._entries = bytearray()

    def _flush(self, p: int) -> None:
        assert self._dir is not None
        with open(self._dir / str(p), "ab") as f:
            f.write(self._buffers[p])
        self._buffers[p].clear()

    def close(self) -> None:
        """Frees the keys and removes the spill files (the set is empty afterwards)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._buffers, self._entries, self._count = None, [], bytearray(), 0

    def __enter__(self) -> "KeySet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def remove_stale_spills(root: Path | None = None, prefix: str = SPILL_PREFIX) -> int:
    """Removes spill folders (named `prefix` + owner pid + "-" + anything: also the stdin spools
    of cli/stdio.py) left by batchllm processes that no longer run (a kill -9 skips close()).
    Returns how many were removed."""
    root = Path(root or tempfile.gettempdir())
    removed = 0
    for path in root.glob(f"{prefix}*-*"):
        pid_text = path.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or not path.is_dir() or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive, not ours to judge
        return True
    return True


def _partition_of(entries: np.ndarray) -> np.ndarray:
    """[n] uint8 partition of each entry: its digest's first byte, masked (no wide temporaries)."""
    first_bytes = np.ascontiguousarray(entries).view(np.uint8).reshape(-1, ENTRY_DTYPE.itemsize)[:, 0]
    return first_bytes & np.uint8(_MASK)


def _partitions(keys: KeySet) -> Iterator[np.ndarray]:
    for p in range(NUM_PARTITIONS):
        part = keys.partition(p)
        if len(part):
            yield part


def duplicates(keys: KeySet, limit: int = 20) -> tuple[list[tuple[int, int]], int]:
    """(up to `limit` (first line, repeating line) pairs ordered by repeating line, how many
    entries repeat an earlier key). A key seen three times gives (1st, 2nd) and (1st, 3rd)."""
    named = np.zeros((0, 2), dtype=np.int64)  # [<= limit, 2] the pairs kept so far
    total = 0
    for part in _partitions(keys):
        part = part[np.lexsort((part["line"], part["lo"], part["hi"]))]
        same = (part["hi"][1:] == part["hi"][:-1]) & (part["lo"][1:] == part["lo"][:-1])
        if not same.any():
            continue
        starts = np.concatenate(([True], ~same))  # [n] first entry of a run of equal keys
        first = np.maximum.accumulate(np.where(starts, np.arange(len(part)), 0))
        repeat = np.flatnonzero(~starts)
        total += len(repeat)
        lines = part["line"].astype(np.int64)
        pairs = np.stack([lines[first[repeat]], lines[repeat]], axis=1)
        named = np.concatenate([named, pairs])
        named = named[np.argsort(named[:, 1], kind="stable")][:limit]
    return [(int(a), int(b)) for a, b in named], total


def repeated_lines(keys: KeySet) -> np.ndarray:
    """[k] sorted lines whose key an earlier line already had (all of them, unlike duplicates)."""
    found = [np.zeros(0, dtype=np.int64)]
    for part in _partitions(keys):
        part = part[np.lexsort((part["line"], part["lo"], part["hi"]))]
        same = (part["hi"][1:] == part["hi"][:-1]) & (part["lo"][1:] == part["lo"][:-1])
        found.append(part["line"][1:][same].astype(np.int64))
    return np.sort(np.concatenate(found))


class LineSet:
    """A set of 1-based line numbers as a bitmap (one bit a line of the input)."""

    def __init__(self, bits: bytearray) -> None:
        self._bits = bits

    def __len__(self) -> int:
        return int.from_bytes(self._bits, "little").bit_count()

    def __contains__(self, line: int) -> bool:
        byte = line >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (line & 7) & 1)


def lines_in(keys: KeySet, others: KeySet, max_line: int) -> LineSet:
    """The lines of `keys` whose key is also in `others` (e.g. input lines already answered)."""
    bits = np.zeros((max_line >> 3) + 1, dtype=np.uint8)
    if len(others):
        for p in range(NUM_PARTITIONS):
            mine = keys.partition(p)
            if not len(mine):
                continue
            theirs = others.partition(p)
            if not len(theirs):
                continue
            found = _rows_in(mine, theirs)
            lines = mine["line"][found].astype(np.int64)
            np.bitwise_or.at(bits, lines >> 3, (1 << (lines & 7)).astype(np.uint8))
    return LineSet(bytearray(bits.tobytes()))


def _rows_in(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """[len(mine)] bool: whether each entry's digest is among `theirs`' digests."""
    digests = np.dtype([("hi", ">u8"), ("lo", ">u8")])
    a = np.empty(len(mine), dtype=digests)
    a["hi"], a["lo"] = mine["hi"], mine["lo"]
    b = np.empty(len(theirs), dtype=digests)
    b["hi"], b["lo"] = theirs["hi"], theirs["lo"]
    # a structured array sorts and searches by its fields in order: (hi, lo)
    b.sort()
    pos = np.searchsorted(b, a).clip(max=len(b) - 1)
    return b[pos] == a
