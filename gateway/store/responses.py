"""Stored Responses, for `previous_response_id` and `GET /v1/responses/{id}`: bounded, in memory by
default, in a sqlite file when `gateway.responses_store` names one. The oldest go first."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

# What is kept per response: the response object, the chat it continues (instructions excluded, as
# OpenAI does not carry them over), and the key that made it (others cannot read it).
Stored = dict[str, Any]


class ResponseStore(Protocol):
    def get(self, response_id: str) -> Stored | None: ...
    def put(self, response_id: str, stored: Stored) -> None: ...
    def delete(self, response_id: str) -> bool: ...
    def close(self) -> None: ...


class MemoryStore:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def get(self, response_id: str) -> Stored | None:
        return self._items.get(response_id)

    def put(self, response_id: str, stored: Stored) -> None:
        self._items[response_id] = stored
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None

    def close(self) -> None:
        self._items.clear()


class SqliteStore:
    """One table of JSON documents; calls are short and serialised by a lock (any thread may call)."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, body TEXT)"
        )

    def get(self, response_id: str) -> Stored | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM responses WHERE id = ?", (response_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, response_id: str, stored: Stored) -> None:
        body = json.dumps(stored, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (id, body) VALUES (?, ?)", (response_id, body))
            self._db.execute("DELETE FROM responses WHERE seq <= (SELECT MAX(seq) FROM responses) - ?", (self._limit,))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(path: Path | None, limit: int) -> ResponseStore:
    return MemoryStore(limit) if path is None else SqliteStore(path, limit)
