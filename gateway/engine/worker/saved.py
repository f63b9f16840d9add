"""A worker's prefixes on disk (`gateway.prefix_store`): when it unloads, the KV cells of its most
valuable cached prefixes are written to the prefix store (engine/prefixstore); on a later load a
request whose prompt begins with a stored prefix, longer than what the pool holds, gets those cells
loaded into a sequence of its own (llama_state_seq_set_data), which the batch then reuses as it
reuses any cached prefix: only the rest of the prompt is evaluated.

What is worth saving: a prefix several requests shared (the part they shared: a system prompt, a tool
catalogue; a part shared with a prefix stored before is that one, refreshed rather than written
again), or else a whole cached prompt and answer (a conversation's next turn begins with it);
valued by its length times the requests that used it, the most recent first among equals, and never
one that another chosen prefix begins with (restoring that one covers it). The save stops at
`save_max_bytes` written or `save_time` spent, so an unload stays bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.engine.prefixstore.key import model_key
from gateway.engine.prefixstore.store import PrefixStore, Stored, common_prefix
from gateway.engine.worker.backend import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cached:
    """A sequence the pool keeps: the tokens its cells hold, and how other requests used it."""

    seq: int
    tokens: list[int]
    hits: int = 0  # requests that took cells from it
    shared: int = 0  # the longest prefix one of them took


def choose(
    cached: Sequence[Cached], min_tokens: int, stored: Sequence[Sequence[int]] = ()
) -> list[tuple[int, list[int]]]:
    """(sequence, the tokens of its cells to save), most valuable first; `cached` oldest first;
    `stored`: the prefixes on disk already (a part shared with one of them is what is kept)."""
    chosen: dict[tuple[int, ...], list[int]] = {}  # prefix -> [sequence, uses, recency]
    for recency, entry in enumerate(cached):
        others = [*(o.tokens for o in cached if o is not entry), *stored]
        shared = max([entry.shared, *(common_prefix(entry.tokens, other) for other in others)])
        length = shared if shared >= min_tokens else len(entry.tokens)
        prefix = tuple(entry.tokens[:length])
        if len(prefix) < min_tokens:
            continue
        if prefix in chosen:
            chosen[prefix][1] += 1 + entry.hits
            chosen[prefix][2] = recency
        else:
            chosen[prefix] = [entry.seq, 1 + entry.hits, recency]
    ranked = sorted(chosen.items(), key=lambda item: (len(item[0]) * item[1][1], item[1][2]), reverse=True)
    picked: list[tuple[int, list[int]]] = []
    for prefix, (seq, _, _) in ranked:
        if not any(tuple(tokens[: len(prefix)]) == prefix for _, tokens in picked):
            picked.append((seq, list(prefix)))
    return picked


class SavedPrefixes:
    def __init__(
        self, store: PrefixStore, backend: Backend, *, min_tokens: int, save_max_bytes: int, save_time: float
    ) -> None:
        self.store = store
        self._backend = backend
        self.min_tokens = min_tokens
        self._save_max_bytes = save_max_bytes
        self._save_time = save_time
        self.restored = 0  # prefixes loaded from disk since this worker loaded
        self.restored_tokens = 0

    def find(self, prompt: Sequence[int], in_pool: int) -> tuple[Stored | None, int]:
        """The stored prefix to restore for `prompt`, when it gives at least `min_tokens` more than the
        `in_pool` tokens cached sequences offer; and the tokens it shares with the prompt."""
        if len(prompt) - in_pool < self.min_tokens:
            return None, 0
        stored, shared = self.store.best(prompt, self._backend.n_ctx)
        if stored is None or shared - in_pool < self.min_tokens:
            return None, 0
        return stored, shared

    def restore(self, seq: int, stored: Stored) -> bool:
        """Load a stored prefix's cells into the empty sequence `seq`; False leaves it empty."""
        state = self.store.load(stored)
        if state is None:
            return False
        if not self._backend.set_seq_state(seq, state):
            log.warning("prefix store: llama.cpp refused %s (%d tokens)", stored.name, len(stored.tokens))
            return False
        if self._backend.seq_length(seq) != len(stored.tokens):
            log.warning("prefix store: %s restored the wrong number of cells", stored.name)
            self._backend.seq_rm(seq, 0, -1)
            return False
        self.restored += 1
        self.restored_tokens += len(stored.tokens)
        return True

    def save(self, cached: Sequence[Cached]) -> tuple[int, int]:
        """Write the most valuable of `cached` (oldest first) within the unload's bounds; the pool's
        cells may be cut short doing so (the worker exits next). Returns (prefixes, bytes) written."""
        deadline = time.monotonic() + self._save_time
        lengths = {entry.seq: len(entry.tokens) for entry in cached}
        files = written = 0
        stored = [entry.tokens for entry in self.store.entries()]
        for seq, tokens in choose(cached, self.min_tokens, stored):
            if time.monotonic() > deadline:
                break
            if self.store.covering(tokens) is not None:
                self.store.save(tokens, b"")  # refreshed, not written again
                continue
            if len(tokens) < lengths[seq]:
                self._backend.seq_rm(seq, len(tokens), -1)  # only the shared part is kept
            try:
                state = self._backend.seq_state(seq)
            except Exception as exc:
                log.warning("prefix store: could not read sequence %d: %r", seq, exc)
                continue
            if written + len(state) > self._save_max_bytes:
                continue
            size = self.store.save(tokens, state)
            files += size > 0
            written += size
        return files, written


def llama_build() -> str:
    """This llama.cpp build, for the key: llama-cpp-python's version and its sequence-state format."""
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}, state seq v{llama_cpp.LLAMA_STATE_SEQ_VERSION}"


def open_saved(config: dict[str, Any], backend: Backend, build: str) -> SavedPrefixes | None:
    """The worker's prefixes on disk, as `config["prefix_store"]` says (None: not kept); `build`
    names the llama.cpp build, part of the key."""
    settings = config.get("prefix_store")
    if not settings:
        return None
    key = model_key(config, build)
    if key is None:
        return None
    try:
        store = PrefixStore(Path(settings["path"]), key, int(settings["max_bytes"]))
    except OSError as exc:
        log.warning("prefix store %s unavailable: %s", settings["path"], exc)
        return None
    return SavedPrefixes(
        store,
        backend,
        min_tokens=int(settings["min_tokens"]),
        save_max_bytes=int(settings["save_max_bytes"]),
        save_time=float(settings["save_time"]),
    )
