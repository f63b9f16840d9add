"""Stored Responses, for `previous_response_id` and `GET /v1/responses/{id}`: bounded (the oldest go
first), kept in the gateway's database (`gateway.store`: SQLite by default, PostgreSQL shared by
replicas), or in a SQLite file of their own when the deprecated `gateway.responses_store` names one."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from gateway.store.database import Database, SqliteDatabase

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


class DocumentStore:
    """JSON documents of one kind in the gateway's database (`documents`, keyed by kind and id), the
    newest `limit` kept. Another kind (conversations, ...) is another instance with its own `kind`."""

    def __init__(self, db: Database, kind: str, limit: int, *, owns_db: bool = False) -> None:
        self._db = db
        self._kind = kind
        self._limit = limit
        self._owns_db = owns_db

    def get(self, response_id: str) -> Stored | None:
        rows = self._db.query("SELECT body FROM documents WHERE kind = ? AND id = ?", (self._kind, response_id))
        return None if not rows else dict(json.loads(rows[0][0]))

    def put(self, response_id: str, stored: Stored) -> None:
        body = json.dumps(stored, ensure_ascii=False)
        self._db.execute(
            "INSERT INTO documents (kind, id, body) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
            (self._kind, response_id, body),
        )
        self._db.execute(
            "DELETE FROM documents WHERE kind = ? AND seq <= (SELECT MAX(seq) FROM documents WHERE kind = ?) - ?",
            (self._kind, self._kind, self._limit),
        )

    def delete(self, response_id: str) -> bool:
        return self._db.execute("DELETE FROM documents WHERE kind = ? AND id = ?", (self._kind, response_id)) > 0

    def close(self) -> None:
        if self._owns_db:
            self._db.close()


class SqliteStore(DocumentStore):
    """Stored Responses in a SQLite file of their own (the deprecated `gateway.responses_store`)."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(SqliteDatabase(path), "response", limit, owns_db=True)
