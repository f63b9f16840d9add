"""The prefix store: one directory (`gateway.prefix_store.path`) of prefix files (files.py) shared by
every model and worker, least recently used first out once it holds more than `max_bytes`.

A worker sees the files of its own key (their names start with the key's digest) and indexes them by
their tokens; a file is read whole and checked before its state is used. Writes are atomic (a
temporary name in the same directory, then a rename), so a reader sees a whole file or none. Two
workers may share the directory: each writes under a name of its own, a file another one deleted is
simply gone from the index, and both trim to the same bound. Use refreshes a file's modification time,
which is what "least recently used" reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.engine.prefixstore.files import Corrupt, Mismatch, encode, read_header, read_payload, token_bytes
from gateway.engine.prefixstore.key import key_digest

log = logging.getLogger(__name__)
SUFFIX = ".kv"
_STALE_TEMPORARY = 3600.0  # a writer that died mid-file left this; nobody renames it any more


@dataclass(frozen=True)
class Stored:
    name: str
    tokens: tuple[int, ...]
    size: int


class PrefixStore:
    def __init__(self, directory: Path, key: bytes, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._key = key
        self._prefix = key_digest(key) + "-"
        self._index: dict[str, Stored] = {}
        self._scanned: int | None = None  # the directory's mtime at the last scan
        directory.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------------------

    def entries(self) -> list[Stored]:
        self.refresh()
        return list(self._index.values())

    def refresh(self) -> None:
        """Index the files of this key written since the last look (another worker may have added
        some): a damaged file or one of another key under this key's name is deleted."""
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._scanned:
            return
        self._scanned = mtime
        names = {p.name for p in self.directory.glob(f"{self._prefix}*{SUFFIX}")}
        for name in list(self._index):
            if name not in names:
                del self._index[name]
        for name in names - set(self._index):
            path = self.directory / name
            try:
                with open(path, "rb") as file:
                    header = read_header(file, self._key, os.fstat(file.fileno()).st_size)
            except FileNotFoundError:
                continue
            except (Corrupt, Mismatch, struct.error) as exc:
                self._discard(path, str(exc))
                continue
            except OSError as exc:
                log.warning("prefix store: cannot read %s: %s", path, exc)
                continue
            self._index[name] = Stored(name, header.tokens, header.size)

    def best(self, prompt: Sequence[int], longest: int) -> tuple[Stored | None, int]:
        """The stored prefix sharing the most tokens with `prompt` (at most `longest` tokens long)."""
        best, best_length = None, 0
        for stored in self.entries():
            if len(stored.tokens) > longest or not stored.tokens or stored.tokens[0] != prompt[0]:
                continue
            n = common_prefix(stored.tokens, prompt)
            if n > best_length:
                best, best_length = stored, n
        return best, best_length

    def load(self, stored: Stored) -> bytes | None:
        """The state bytes of a stored prefix, checked whole; None (and the file gone) when it is not
        exactly what was written under this key and these tokens."""
        path = self.directory / stored.name
        try:
            with open(path, "rb") as file:
                header = read_header(file, self._key, os.fstat(file.fileno()).st_size)
                if header.tokens != stored.tokens:
                    raise Corrupt("its tokens changed")
                payload = read_payload(file, header)
        except FileNotFoundError:
            self._index.pop(stored.name, None)
            return None
        except (Corrupt, Mismatch, struct.error) as exc:
            self._discard(path, str(exc))
            return None
        self._touch(path)
        return payload

    # -- writing ---------------------------------------------------------------------------------

    def covering(self, tokens: Sequence[int]) -> Stored | None:
        """A stored prefix that begins with all of `tokens` (it restores them: no need to write them)."""
        wanted = tuple(tokens)
        for stored in self.entries():
            if stored.tokens[: len(wanted)] == wanted:
                return stored
        return None

    def save(self, tokens: Sequence[int], payload: bytes) -> int:
        """Write a prefix (or refresh one that covers it); the bytes written."""
        covering = self.covering(tokens)
        if covering is not None:
            self._touch(self.directory / covering.name)
            return 0
        header = encode(self._key, tokens, payload)
        size = len(header) + len(payload)
        if size > self.max_bytes:
            return 0
        digest = hashlib.sha256(self._key + token_bytes(tokens)).hexdigest()[:24]
        name = f"{self._prefix}{digest}{SUFFIX}"
        temporary = self.directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temporary, "wb") as file:
                file.write(header)
                file.write(payload)
            os.replace(temporary, self.directory / name)
        except OSError as exc:
            log.warning("prefix store: cannot write %s: %s", self.directory / name, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return 0
        self._index[name] = Stored(name, tuple(tokens), size)
        self.trim()
        return size

    def trim(self) -> None:
        """Delete the least recently used files (of any model) until the store fits `max_bytes`."""
        files = []
        now = time.time()
        for path in self.directory.iterdir():
            try:
                stat = path.stat()
            except OSError:
                continue
            if path.name.endswith(".tmp") and now - stat.st_mtime > _STALE_TEMPORARY:
                with contextlib.suppress(OSError):
                    path.unlink()
            elif path.name.endswith(SUFFIX) and not path.name.startswith("."):
                files.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
            self._index.pop(path.name, None)
            total -= size

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    def _discard(self, path: Path, why: str) -> None:
        log.warning("prefix store: discarding %s (%s)", path.name, why)
        with contextlib.suppress(OSError):
            path.unlink()
        self._index.pop(path.name, None)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def usage(directory: Path) -> tuple[int, int]:
    """Files and bytes in a store directory (for /metrics)."""
    files = size = 0
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            if path.name.endswith(SUFFIX) and not path.name.startswith("."):
                with contextlib.suppress(OSError):
                    size += path.stat().st_size
                    files += 1
    return files, size
