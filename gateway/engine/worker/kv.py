"""Bookkeeping of the shared KV pool: which cells each sequence holds, and which finished sequences
stay cached for prefix reuse. Pure: the batch loop mirrors every llama.cpp memory call here.

llama.cpp no longer reports cells in use (its KV-usage metric was removed), and a unified pool that
fills mid-generation fails every sequence in the step, so the loop admits requests by this count.

A sequence's cells are a list of segments over blocks. A block is a run of cells one sequence wrote;
`share` (llama_memory_seq_cp of a prefix) makes another sequence reference the first cells of the
same blocks, which costs no cells. A block holds as many cells as its longest reference.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

from gateway.engine.prefixstore.store import common_prefix


class KvLedger:
    def __init__(self, cells: int) -> None:
        self.cells = cells
        self._segments: dict[int, list[list[int]]] = {}  # seq -> [[block, length], ...]
        self._own: dict[int, int] = {}  # seq -> the block it writes into
        self._blocks = itertools.count()

    def extend(self, seq: int, n: int) -> None:
        """`seq` wrote `n` more cells (after a decode)."""
        segments = self._segments.setdefault(seq, [])
        own = self._own.get(seq)
        if own is None:
            own = self._own[seq] = next(self._blocks)
        if segments and segments[-1][0] == own:
            segments[-1][1] += n
        else:
            segments.append([own, n])

    def share(self, src: int, dst: int, n: int) -> None:
        """`dst` (empty) now holds `src`'s first `n` cells, as llama_memory_seq_cp(src, dst, 0, n)."""
        copied: list[list[int]] = []
        left = n
        for block, length in self._segments.get(src, []):
            if left <= 0:
                break
            copied.append([block, min(length, left)])
            left -= length
        self._segments[dst] = copied

    def length(self, seq: int) -> int:
        return sum(length for _, length in self._segments.get(seq, []))

    def drop(self, seq: int) -> None:
        """llama_memory_seq_rm(seq, 0, -1): cells nobody else references become free."""
        self._segments.pop(seq, None)
        self._own.pop(seq, None)

    def seqs(self) -> list[int]:
        """Sequences holding cells."""
        return list(self._segments)

    def used(self, seqs: set[int] | None = None) -> int:
        """Cells held by every sequence, or by those in `seqs`."""
        held: dict[int, int] = {}
        for seq, segments in self._segments.items():
            if seqs is not None and seq not in seqs:
                continue
            for block, length in segments:
                held[block] = max(held.get(block, 0), length)
        return sum(held.values())


class PrefixCache:
    """Finished sequences kept in the pool, least recently used first: a new prompt that begins with
    one's tokens copies those cells instead of recomputing them. Cached cells are reclaimable: the
    loop evicts entries whenever a request needs room or a sequence id. Each entry counts the requests
    that took cells from it and the longest prefix one took (what is worth keeping on disk: saved.py)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, list[int]] = OrderedDict()  # seq -> tokens in its cells
        self._uses: dict[int, tuple[int, int]] = {}  # seq -> (requests that took cells, the longest prefix taken)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, seq: object) -> bool:
        return seq in self._entries

    def add(self, seq: int, tokens: list[int]) -> list[int]:
        """Cache `seq`; returns the entries made redundant (their tokens are a prefix of these)."""
        redundant = [s for s, cached in self._entries.items() if common_prefix(cached, tokens) == len(cached)]
        hits = 0
        for s in redundant:
            del self._entries[s]
            hits += self._uses.pop(s, (0, 0))[0]  # their uses are this one's: it covers them
        self._entries[seq] = tokens
        self._uses[seq] = (hits, 0)
        return redundant

    def best(self, prompt: Sequence[int]) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with `prompt`, and that length."""
        best_seq, best_len = None, 0
        for seq, tokens in self._entries.items():
            n = common_prefix(tokens, prompt)
            if n > best_len:
                best_seq, best_len = seq, n
        return best_seq, best_len

    def touch(self, seq: int) -> None:
        self._entries.move_to_end(seq)

    def used(self, seq: int, n: int) -> None:
        """A request took the entry's first `n` cells."""
        hits, shared = self._uses.get(seq, (0, 0))
        self._uses[seq] = (hits + 1, max(shared, n))
        self._entries.move_to_end(seq)

    def entries(self) -> list[tuple[int, list[int], int, int]]:
        """(sequence, tokens, requests that took cells, the longest prefix taken), oldest first."""
        return [(seq, tokens, *self._uses.get(seq, (0, 0))) for seq, tokens in self._entries.items()]

    def oldest(self, keep: int | None = None) -> int | None:
        return next((s for s in self._entries if s != keep), None)

    def remove(self, seq: int) -> None:
        self._entries.pop(seq, None)
        self._uses.pop(seq, None)
