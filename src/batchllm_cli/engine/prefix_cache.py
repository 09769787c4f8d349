"""A block-hash prefix cache with LRU eviction: the KV reuse of vLLM and SGLang (pure Python).

What streaming engines do instead of planning the batch: every full block of a stored prompt is
registered under the hash of all tokens up to its end, so a later request whose prompt starts
with the same tokens finds those blocks and skips computing them. Blocks stay cached after their
requests finish, until memory is needed: then the least recently used block that no running
request holds is evicted. The cache holds one reference on each cached block (BlockPool counts);
a block whose only reference is the cache's is evictable.

Differences from the real engines, kept deliberately small: whole blocks only (SGLang's radix
cache matches single tokens), prompt blocks only (vLLM also caches blocks filled by decoding).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from batchllm_cli.engine.block_pool import BlockPool


class PrefixCache:
    """Cached KV blocks by chained block hash, evictable ones in LRU order."""

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self._block_of: dict[int, int] = {}  # chained hash -> block
        self._hash_of: dict[int, int] = {}  # block -> chained hash
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cache-only blocks, LRU first
        self.hits = 0  # blocks found by lookups
        self.evictions = 0

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self._hash_of)

    def _hashes(self, token_ids: np.ndarray, num_blocks: int) -> list[int]:
        out, h = [], 0
        for i in range(num_blocks):
            h = hash((h, token_ids[i * self.block_size : (i + 1) * self.block_size].tobytes()))
            out.append(h)
        return out

    def match(self, prompt_ids: np.ndarray) -> int:
        """How many leading blocks of `prompt_ids` are cached (at most (len - 1) // block_size:
        the last prompt token is always computed, its logits give the first output token)."""
        n = 0
        for h in self._hashes(prompt_ids, (len(prompt_ids) - 1) // self.block_size):
            if h not in self._block_of:
                break
            n += 1
        return n

    def num_evictable_in(self, prompt_ids: np.ndarray, num_blocks: int) -> int:
        """How many of the first `num_blocks` cached blocks of `prompt_ids` are evictable now:
        taking them pins them, so they stop counting as memory that eviction can free."""
        return sum(self._block_of[h] in self._evictable for h in self._hashes(prompt_ids, num_blocks))

    def take(self, prompt_ids: np.ndarray, num_blocks: int) -> list[int]:
        """The first `num_blocks` cached blocks of `prompt_ids` (as `match` found them), with a
        reference each for the request that takes them."""
        blocks = [self._block_of[h] for h in self._hashes(prompt_ids, num_blocks)]
        for b in blocks:
            self._evictable.pop(b, None)
        self.pool.incref(blocks)
        self.hits += len(blocks)
        return blocks

    def insert(self, prompt_ids: np.ndarray, blocks: Sequence[int]) -> None:
        """Registers the full prompt blocks of a request whose prompt is stored (`blocks`: its
        block table); blocks already cached under the same hash are left as they are."""
        full = len(prompt_ids) // self.block_size
        for h, b in zip(self._hashes(prompt_ids, full), blocks):
            if h in self._block_of or b in self._hash_of:
                continue
            self._block_of[h] = b
            self._hash_of[b] = h
            self.pool.incref([b])

    def released(self, blocks: Sequence[int]) -> None:
        """After a request dropped its references on `blocks`: the cached ones no one else
        holds become evictable, as the most recently used."""
        for b in blocks:
            if b in self._hash_of and self.pool.ref_count(b) == 1:
                self._evictable[b] = None
                self._evictable.move_to_end(b)

    def evict(self, num_blocks: int) -> None:
        """Frees the `num_blocks` least recently used evictable blocks."""
        for _ in range(num_blocks):
            b, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(b)]
            self.pool.free([b])
            self.evictions += 1

    def holders(self) -> list[list[int]]:
        """The cache's references, one list (for BlockPool.check_integrity)."""
        return [list(self._hash_of)]
