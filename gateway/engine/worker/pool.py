"""The worker's sequences and KV cells as one pool: sequence ids, the cells each holds (`KvLedger`)
and the finished prompts kept for reuse (`PrefixCache`), some of them loaded from the prefix store
(`saved.py`). Every llama.cpp memory call of the batch goes through here, so the ledger always
mirrors llama.cpp's cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.engine.prefixstore.store import Stored, common_prefix
from gateway.engine.worker.backend import Backend
from gateway.engine.worker.kv import KvLedger, PrefixCache
from gateway.engine.worker.saved import Cached, SavedPrefixes
from gateway.engine.worker.sequences import Job, Request


class SequencePool:
    def __init__(self, backend: Backend, cached_max: int, saved: SavedPrefixes | None = None) -> None:
        self._backend = backend
        self.saved = saved  # prefixes on disk (gateway.prefix_store), restored on demand
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

    def best_prefix(self, prompt: list[int], running: Iterable[Job]) -> tuple[int | None, int]:
        """The cached or running sequence sharing the longest prefix with `prompt`, and that length."""
        source, reused = self.cache.best(prompt)
        for job in running:
            n = common_prefix(job.tokens, prompt)
            if n > reused:
                source, reused = job.primary.seq, n
        return source, reused

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
            self.cache.used(source, n)

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

    def fits_uncached(self, cells: int, ids: int, running: Iterable[Job]) -> bool:
        """Whether `cells` more cells and `ids` sequence ids would fit once every cached prefix was evicted."""
        held = {seq for seq in self.ledger.seqs() if seq not in self.cache}
        committed = self.ledger.used(held) + sum(job.reserve for job in running)
        return committed + cells <= self.cells and self.free_ids + len(self.cache) >= ids

    def restore_prefix(
        self, request: Request, source: int | None, reused: int, running: Sequence[Job]
    ) -> tuple[int | None, int]:
        """The prefix `request` reuses: a stored one longer than the pool's best (`source`, `reused`),
        loaded into a cached sequence when it and the request both fit (cached prefixes are evicted for
        it: it offers more than any of them); else the pool's best, or nothing if that was evicted."""
        if self.saved is None:
            return source, reused
        stored, shared = self.saved.find(request.prompt, reused)
        if stored is None:
            return source, reused
        prompt = len(request.prompt)
        need = len(stored.tokens) + prompt - min(shared, prompt - 1) + request.n * request.limit
        if not self.fits_uncached(need, request.n + 1, running):
            return source, reused
        evictable = source in self.cache
        seq = None
        while self.committed(running) + need > self.cells or self.free_ids < request.n + 1:
            if not self.evict_oldest():  # fits_uncached said it would fit: never, but never a loop either
                break
        else:
            seq = self._restore(stored)
        if seq is not None:
            return seq, shared
        return (None, 0) if evictable and source not in self.cache else (source, reused)

    def saveable(self, running: Iterable[Job]) -> list[Cached]:
        """What an unload may keep on disk: the cached prefixes, oldest first, then what running
        requests' first sequences hold."""
        kept = [Cached(seq, tokens, hits, shared) for seq, tokens, hits, shared in self.cache.entries()]
        for job in running:
            if job.choices and not job.dropped:
                kept.append(Cached(job.primary.seq, job.tokens[: self.ledger.length(job.primary.seq)]))
        return kept

    def _restore(self, stored: Stored) -> int | None:
        """A stored prefix loaded into a sequence of its own and cached like a finished prompt; None
        when it could not be (the store discarded it, or llama.cpp refused it)."""
        if self.saved is None:
            return None
        seq = self.take()
        if not self.saved.restore(seq, stored):
            self._free.append(seq)
            return None
        self.ledger.extend(seq, len(stored.tokens))
        self.keep(seq, list(stored.tokens))
        return seq

    def keep(self, seq: int, tokens: list[int]) -> None:
        """A finished first sequence stays cached for prefix reuse (its cells hold `tokens`)."""
        for redundant in self.cache.add(seq, tokens):
            self.release(redundant)
        while len(self.cache) > self._cached_max:
            self.evict_oldest()
