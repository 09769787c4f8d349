"""Block tables kept on the device: a row per live sequence, written once, read by every step.

A sequence (a request's own blocks, a group's prefix blocks) keeps its block table from
admission to its end: admission reserves the worst case, so the table never grows. Its row of
`table` is written the first time a step names it, and after that a step sends only row
indices; the step's [items, width] tables are gathered on the device. Rows of finished
sequences are reused. The host keeps each row's table to spot a key whose table changed (a new
job's request with the same index), which is written again.

Writes are device copies in stream order: a step issued before a row was reused reads the old
contents, one issued after reads the new.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
import torch

from batchllm_kernels.metadata import ragged_table, upload_flat


class DeviceBlockTables:
    """Rows of block ids on `device`, one per sequence key, `width` columns (a whole context)."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.width = width
        self.device = device
        self.table = torch.zeros((0, width), dtype=torch.int32, device=device)
        self._rows: dict[Hashable, tuple[int, tuple[int, ...]]] = {}  # key -> (row, its table)
        self._index_rows = np.zeros(0, dtype=np.int32)  # row of each key that is an int >= 0, -1: none
        self._free: list[int] = []
        self.writes = 0  # rows written so far (tests, and a measure of the traffic saved)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, keys: Sequence[Hashable], tables: Sequence[tuple[int, ...]]) -> np.ndarray:
        """The row of each key ([n] int32); rows first seen, or whose table changed, are written
        in one packed upload and one device scatter.

        Keys given as an int array (request indices: a step's decodes) are looked up at once:
        a key known already keeps its row unchecked, since a running request's table never
        changes (worst-case reservation); only the unknown ones go the way of other keys."""
        if isinstance(keys, np.ndarray):
            return self._index_keys(keys, tables)
        out = np.empty(len(keys), dtype=np.int32)
        new_rows: list[int] = []
        new_tables: list[tuple[int, ...]] = []
        for i, (key, table) in enumerate(zip(keys, tables)):
            entry = self._rows.get(key)
            if entry is not None and (entry[1] is table or entry[1] == table):
                out[i] = entry[0]
                continue
            if len(table) > self.width:
                raise ValueError(f"a block table of {len(table)} blocks exceeds the context's {self.width}")
            row = entry[0] if entry is not None else (self._free.pop() if self._free else self._grow())
            self._rows[key] = (row, table)
            self._mirror(key, row)
            out[i] = row
            new_rows.append(row)
            new_tables.append(table)
        if new_rows:
            self._write(new_rows, new_tables)
        return out

    def release(self, key: Hashable) -> None:
        """The sequence of `key` ended: its row may serve another."""
        entry = self._rows.pop(key, None)
        if entry is not None:
            self._free.append(entry[0])
            self._mirror(key, -1)

    def reset(self) -> None:
        """Forgets every sequence (a new job starts); the rows stay allocated."""
        self._free.extend(row for row, _ in self._rows.values())
        self._rows.clear()
        self._index_rows.fill(-1)

    def gather(self, rows: torch.Tensor, width: int) -> torch.Tensor:
        """[len(rows), width] int32: the first `width` columns of those rows (device to device)."""
        return self.table[:, : max(width, 1)].index_select(0, rows)

    def _index_keys(self, keys: np.ndarray, tables: Sequence[tuple[int, ...]]) -> np.ndarray:
        known = self._index_rows
        out = np.full(len(keys), -1, dtype=np.int32)
        inside = keys < len(known)
        out[inside] = known[keys[inside]]
        new = np.flatnonzero(out < 0).tolist()
        if new:
            out[new] = self.rows([int(keys[i]) for i in new], [tables[i] for i in new])
        return out

    def _mirror(self, key: Hashable, row: int) -> None:
        """Keeps `_index_rows` in step with `_rows` for the keys that are ints >= 0."""
        if not isinstance(key, (int, np.integer)) or key < 0:
            return
        if key >= len(self._index_rows):
            grown = np.full(max(2 * len(self._index_rows), int(key) + 1, 64), -1, dtype=np.int32)
            grown[: len(self._index_rows)] = self._index_rows
            self._index_rows = grown
        self._index_rows[key] = row

    def _write(self, rows: list[int], tables: list[tuple[int, ...]]) -> None:
        block = ragged_table(tables)
        index, values = upload_flat([np.asarray(rows, dtype=np.int32), block], torch.int32, self.device).split(
            [len(rows), block.size])
        self.table[index.long(), : block.shape[1]] = values.view(block.shape)
        self.writes += len(rows)

    def _grow(self) -> int:
        n = self.table.shape[0]
        more = max(16, n)
        self.table = torch.cat([self.table, torch.zeros((more, self.width), dtype=torch.int32, device=self.device)])
        self._free.extend(range(n + more - 1, n, -1))
        return n
