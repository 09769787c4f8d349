"""A block-hash prefix cache with LRU eviction: the KV reuse of vLLM and SGLang (pure Python).

What streaming engines do instead of planning the batch: every full block of a stored prompt is
registered under the hash of all tokens up to its end, so a later request whose prompt starts
with the same tokens finds those blocks and skips computing them. Blocks stay cached after their
requests finish, until memory is needed: then the least recently used block that no running
request holds is evicted. The cache holds one reference on each cached block (BlockPool counts);
a block whose only reference is the cache's is evictable.

Differences from the real engines, kept deliberately small: whole blocks only (SGLang's radix
cache matches single tokens), prompt blocks only (vLLM also caches blocks filled by decoding).
A prompt's block hashes are computed once (`PrefixCache.hashes`, as vLLM keeps them on the
request); a lookup is then one dict probe per block.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from batchllm_cli.engine.block_pool import BlockPool


@dataclass(frozen=True)
class PromptHashes:
    """The chained hashes of a prompt's full blocks (block i's covers all tokens up to its end)."""

    full: tuple[int, ...]
    # blocks a lookup may reuse: (len - 1) // block_size, since the last prompt token is always
    # computed (its logits give the first output token)
    matchable: int


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

    def hashes(self, prompt_ids: np.ndarray) -> PromptHashes:
        """The block hashes of a prompt, for the lookups below (compute once per request)."""
        out, h, bs = [], 0, self.block_size
        for i in range(len(prompt_ids) // bs):
            h = hash((h, prompt_ids[i * bs : (i + 1) * bs].tobytes()))
            out.append(h)
        return PromptHashes(tuple(out), (len(prompt_ids) - 1) // bs)

    def match(self, prompt: PromptHashes) -> int:
        """How many leading blocks of the prompt are cached (at most `prompt.matchable`)."""
        cached = self._block_of
        for n in range(prompt.matchable):
            if prompt.full[n] not in cached:
                return n
        return prompt.matchable

    def num_evictable_in(self, prompt: PromptHashes, num_blocks: int) -> int:
        """How many of the first `num_blocks` cached blocks of the prompt are evictable now:
        taking them pins them, so they stop counting as memory that eviction can free."""
        return sum(self._block_of[h] in self._evictable for h in prompt.full[:num_blocks])

    def take(self, prompt: PromptHashes, num_blocks: int) -> list[int]:
        """The first `num_blocks` cached blocks of the prompt (as `match` found them), with a
        reference each for the request that takes them."""
        blocks = [self._block_of[h] for h in prompt.full[:num_blocks]]
        for b in blocks:
            self._evictable.pop(b, None)
        self.pool.incref(blocks)
        self.hits += len(blocks)
        return blocks

    def insert(self, prompt: PromptHashes, blocks: Sequence[int]) -> None:
        """Registers the full prompt blocks of a request whose prompt is stored (`blocks`: its
        block table); blocks already cached under the same hash are left as they are."""
        for h, b in zip(prompt.full, blocks):
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
