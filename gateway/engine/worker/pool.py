"""The worker's sequences and KV cells as one pool: sequence ids, the cells each holds (`KvLedger`)
and the finished prompts kept for reuse (`PrefixCache`). Every llama.cpp memory call of the batch
goes through here, so the ledger always mirrors llama.cpp's cells.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.engine.worker.backend import Backend
from gateway.engine.worker.kv import KvLedger, PrefixCache
from gateway.engine.worker.sequences import Job


class SequencePool:
    def __init__(self, backend: Backend, cached_max: int) -> None:
        self._backend = backend
        self.ledger = KvLedger(backend.kv_cells)
        self.cache = PrefixCache()
        self._cached_max = cached_max  # as many cached prompts as slots keeps sequence ids dense
        self._free = list(range(backend.max_sequences))

    @property
    def cells(self) -> int:
        return self.ledger.cells

    @property
    def free_ids(self) -> int:
        return len(self._free)

    def committed(self, running: Iterable[Job]) -> int:
        """Cells in use (cached prefixes included) plus what running requests may still write."""
        return self.ledger.used() + sum(job.reserve for job in running)

    def take(self) -> int:
        """The lowest free id: llama.cpp splits a batch whose sequence ids are scattered."""
        self._free.sort()
        return self._free.pop(0)

    def give_back(self, seqs: list[int]) -> None:
        """Ids taken but never written (a request that failed while it was being placed)."""
        self._free.extend(seqs)

    def wrote(self, seq: int, n: int) -> None:
        self.ledger.extend(seq, n)

    def drop_unwritten(self, seq: int, pos: int) -> None:
        """Remove `seq`'s cells from `pos` on, which the ledger never counted (a speculative draft's
        rejected tokens: decoded for verification, not kept)."""
        self._backend.seq_rm(seq, pos, -1)

    def copy_prefix(self, source: int, dest: int, n: int) -> None:
        """`dest` starts with `source`'s first `n` cells, shared rather than copied."""
        self._backend.seq_cp(source, dest, 0, n)
        self.ledger.share(source, dest, n)
        if source in self.cache:
            self.cache.touch(source)

    def release(self, seq: int) -> None:
        self._backend.seq_rm(seq, 0, -1)
        self.ledger.drop(seq)
        self._free.append(seq)

    def evict(self, seq: int) -> None:
        self.cache.remove(seq)
        self.release(seq)

    def evict_oldest(self, keep: int | None = None) -> bool:
        """Drop the least recently used cached prompt (other than `keep`); False if there is none."""
        victim = self.cache.oldest(keep=keep)
        if victim is None:
            return False
        self.evict(victim)
        return True

    def clear_cache(self) -> None:
        while self.evict_oldest():
            pass

    def keep(self, seq: int, tokens: list[int]) -> None:
        """A finished first sequence stays cached for prefix reuse (its cells hold `tokens`)."""
        for redundant in self.cache.add(seq, tokens):
            self.release(redundant)
        while len(self.cache) > self._cached_max:
            self.evict_oldest()
