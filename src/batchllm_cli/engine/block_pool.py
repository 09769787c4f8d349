"""The KV block pool: fixed-size blocks with reference counts and a free list (pure Python).

The pool only hands out block numbers; the tensors they index live in the model runner. A block
is free when its reference count is zero. Blocks of a group's shared prefix are taken once and
referenced by the group, a request's own blocks by the request alone, so that freeing is a plain
decrement whoever owns the block.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from batchllm_cli.errors import CapacityError


class BlockPool:
    """`num_blocks` KV blocks: allocate, share (incref), free (decref), and an integrity check."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise CapacityError(f"the KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        # FIFO reuse keeps block numbers spread out, which makes use-after-free bugs visible
        self._free: deque[int] = deque(range(num_blocks))
        self.peak_used = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def ref_count(self, block: int) -> int:
        return self._ref_counts[block]

    def allocate(self, n: int) -> list[int]:
        """Takes `n` free blocks (reference count 1 each); raises CapacityError if too few."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            raise CapacityError(
                f"the KV pool has {len(self._free)} free blocks of {self.num_blocks}, "
                f"{n} were asked for"
            )
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._ref_counts[b] = 1
        self.peak_used = max(self.peak_used, self.num_used)
        return blocks

    def incref(self, blocks: Iterable[int]) -> None:
        """Adds one reference to each (allocated) block, for another holder of the same KV."""
        for b in blocks:
            if self._ref_counts[b] <= 0:
                raise ValueError(f"block {b} is free: it cannot be shared")
            self._ref_counts[b] += 1

    def free(self, blocks: Iterable[int]) -> None:
        """Drops one reference from each block; a block whose count reaches zero is free again."""
        for b in blocks:
            count = self._ref_counts[b]
            if count <= 0:
                raise ValueError(f"block {b} is already free (double free)")
            self._ref_counts[b] = count - 1
            if count == 1:
                self._free.append(b)

    def check_integrity(self, holders: Iterable[Iterable[int]] | None = None) -> None:
        """Raises AssertionError if the free list and reference counts disagree.

        With `holders` (every live block list, one per reference), also checks that each
        block's count equals the number of holders naming it: no leak, no dangling share.
        """
        free = list(self._free)
        assert len(free) == len(set(free)), "a block is on the free list twice"
        free_set = set(free)
        for b, count in enumerate(self._ref_counts):
            assert count >= 0, f"block {b} has a negative reference count {count}"
            assert (count == 0) == (b in free_set), f"block {b}: count {count} vs free list"
        if holders is not None:
            expected = [0] * self.num_blocks
            for blocks in holders:
                for b in blocks:
                    expected[b] += 1
            for b, (want, got) in enumerate(zip(expected, self._ref_counts)):
                assert want == got, f"block {b} is held {want} times but counted {got}"
