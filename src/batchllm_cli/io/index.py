"""KeyIndex: the set of a job's record keys in about 36 bytes a key, for duplicates and resume.

A key names one output record: the request's id, or the line number of a bad line whose id
could not be read. Keys are kept as 128-bit BLAKE2 digests (collisions are out of reach at any
job size) with the input line they came from, in flat buffers (20 bytes a key, and 16 more
for the sorted view lookups use): a million-line job costs about 36 MB here instead of the
~100 MB a Python set of the id strings would.
"""

from __future__ import annotations

import hashlib
from array import array

import numpy as np

DIGEST_BYTES = 16


def key_of(record_id: str | None, line: int) -> bytes:
    """The key of a record: its id when it has one, else its 1-based input line number."""
    if record_id is not None:
        return b"i" + record_id.encode("utf-8", "surrogatepass")
    return b"l%d" % line


def _digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=DIGEST_BYTES).digest()


class KeyIndex:
    """An append-only multiset of keys with the line of each; lookups sort it once."""

    def __init__(self) -> None:
        self._digests = bytearray()  # [n * 16] concatenated digests, in insertion order
        self._lines = array("I")  # [n] the (1-based) line each key came from
        self._sorted: np.ndarray | None = None  # [n] uint64 leading digest words, sorted
        self._order: np.ndarray | None = None  # [n] int64 insertion positions in that order

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, key: bytes, line: int) -> None:
        if self._sorted is not None:
            raise RuntimeError("KeyIndex.add after a lookup: the index is frozen")
        self._digests += _digest(key)
        self._lines.append(line)

    def _freeze(self) -> None:
        if self._sorted is None:
            # sort on each digest's leading 64 bits; equal leading words (a repeated key, or a
            # 1-in-2^64 near miss) are told apart by comparing the whole digests
            words = np.frombuffer(self._digests, dtype=">u8").reshape(-1, 2)
            lead = words[:, 0].astype(np.uint64)
            self._order = np.argsort(lead, kind="stable")
            lead.sort()  # in place: the same as lead[order] without a third array
            self._sorted = lead

    def _digest_at(self, pos: int) -> bytes:
        return bytes(self._digests[pos * DIGEST_BYTES : (pos + 1) * DIGEST_BYTES])

    def __contains__(self, key: bytes) -> bool:
        self._freeze()
        assert self._sorted is not None and self._order is not None
        digest = _digest(key)
        lead = np.uint64(int.from_bytes(digest[:8], "big"))
        lo = int(np.searchsorted(self._sorted, lead, side="left"))
        hi = int(np.searchsorted(self._sorted, lead, side="right"))
        return any(self._digest_at(int(self._order[i])) == digest for i in range(lo, hi))

    def duplicates(self, limit: int = 20) -> list[tuple[int, int]]:
        """Up to `limit` (first line, repeated line) pairs of equal keys, by repeated line."""
        self._freeze()
        assert self._sorted is not None and self._order is not None
        pairs: list[tuple[int, int]] = []
        for i in np.flatnonzero(self._sorted[1:] == self._sorted[:-1]):
            a, b = int(self._order[i]), int(self._order[i + 1])
            if self._digest_at(a) == self._digest_at(b):
                pairs.append((self._lines[a], self._lines[b]))
        # a key seen three times gives (1st, 2nd) and (2nd, 3rd): name the first line in both
        first: dict[int, int] = {}
        named = []
        for a, b in sorted(pairs, key=lambda p: p[1]):
            first[b] = first.get(a, a)
            named.append((first[b], b))
        return named[:limit]

    def count_duplicates(self) -> int:
        """How many keys repeat an earlier one."""
        return len(self.duplicates(limit=len(self)))
