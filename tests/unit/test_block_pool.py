"""BlockPool: allocation, sharing by reference counts, freeing, exhaustion, integrity."""

import pytest

from batchllm_cli.engine.block_pool import BlockPool
from batchllm_cli.errors import CapacityError


def test_allocate_gives_distinct_blocks_and_counts_them():
    pool = BlockPool(8)
    a = pool.allocate(3)
    b = pool.allocate(5)
    assert len(set(a) | set(b)) == 8
    assert pool.num_free == 0 and pool.num_used == 8 and pool.peak_used == 8
    pool.check_integrity([a, b])


def test_exhaustion_raises_and_leaves_the_pool_unchanged():
    pool = BlockPool(4)
    held = pool.allocate(3)
    with pytest.raises(CapacityError, match="1 free blocks of 4"):
        pool.allocate(2)
    assert pool.num_free == 1
    pool.check_integrity([held])


def test_shared_blocks_are_freed_only_by_the_last_holder():
    pool = BlockPool(6)
    prefix = pool.allocate(2)
    pool.incref(prefix)  # a second holder
    pool.check_integrity([prefix, prefix])
    pool.free(prefix)
    assert all(pool.ref_count(b) == 1 for b in prefix) and pool.num_free == 4
    pool.free(prefix)
    assert pool.num_free == 6
    pool.check_integrity([])


def test_freed_blocks_are_reused_and_zero_allocation_is_fine():
    pool = BlockPool(3)
    a = pool.allocate(3)
    pool.free(a[:2])
    assert pool.allocate(0) == []
    b = pool.allocate(2)
    assert sorted(b) == sorted(a[:2])
    assert pool.peak_used == 3


def test_double_free_and_sharing_a_free_block_are_errors():
    pool = BlockPool(2)
    a = pool.allocate(1)
    pool.free(a)
    with pytest.raises(ValueError, match="double free"):
        pool.free(a)
    with pytest.raises(ValueError, match="is free"):
        pool.incref(a)


def test_integrity_detects_a_leak_and_a_corrupt_free_list():
    pool = BlockPool(4)
    a = pool.allocate(2)
    with pytest.raises(AssertionError, match="held 0 times"):
        pool.check_integrity([a[:1]])  # a[1] is counted but nobody holds it: a leak
    pool._free.append(a[0])  # simulate corruption: a used block on the free list
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_empty_pool_is_refused():
    with pytest.raises(CapacityError):
        BlockPool(0)
