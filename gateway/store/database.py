"""The one database behind the gateway's lasting state: SQLite (a file, the default; or in memory) or
PostgreSQL (shared by replicas), with versioned schema migrations.

Calls are blocking and short; callers on the event loop run them in a thread. SQL is written once
with `?` placeholders and portable statements (`ON CONFLICT`), the two dialects differing only in the
DDL of `MIGRATIONS`.

Another kind of stored document (conversations, ...) needs no migration: `documents` is keyed by
(kind, id). A new table is one more entry at the end of `MIGRATIONS`."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

Row = tuple[Any, ...]
log = logging.getLogger(__name__)

# version → (SQLite DDL, PostgreSQL DDL); applied in order, each once, recorded in schema_version.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        """
        CREATE TABLE documents (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
            UNIQUE (kind, id));
        CREATE TABLE usage (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, row_id TEXT NOT NULL UNIQUE, at REAL NOT NULL, day TEXT NOT NULL,
            key_id TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL, duration REAL NOT NULL);
        CREATE INDEX usage_key_at ON usage (key_id, at);
        CREATE INDEX usage_at ON usage (at);
        """,
        """
        CREATE TABLE documents (
            seq BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
            UNIQUE (kind, id));
        CREATE TABLE usage (
            seq BIGSERIAL PRIMARY KEY, row_id TEXT NOT NULL UNIQUE, at DOUBLE PRECISION NOT NULL, day TEXT NOT NULL,
            key_id TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
            prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, reasoning_tokens BIGINT NOT NULL,
            cached_tokens BIGINT NOT NULL, duration DOUBLE PRECISION NOT NULL);
        CREATE INDEX usage_key_at ON usage (key_id, at);
        CREATE INDEX usage_at ON usage (at);
        """,
    ),
]


class Database(Protocol):
    kind: str  # "sqlite" | "postgresql"

    @property
    def ready(self) -> bool:
        """Connected and migrated once (a PostgreSQL unreachable at start-up is not, until it answers)."""
        ...

    def ping(self) -> None:
        """Raise unless the database answers now (connecting and migrating first if it never has)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row, all in one transaction."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def close(self) -> None: ...


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class SqliteDatabase:
    """One connection (WAL, so a reader never waits for the writer), serialised by a lock."""

    kind = "sqlite"
    ready = True

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else path, check_same_thread=False, isolation_level=None, timeout=30
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # two processes on one file migrate one after the other
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                (current,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
                for version, ddl, _ in MIGRATIONS:
                    if version > current:
                        for statement in _statements(ddl):
                            self._db.execute(statement)
                        self._db.execute("INSERT INTO schema_version VALUES (?)", (version,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def ping(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            self._db.close()


_MIGRATION_LOCK = 7_240_024  # pg_advisory_xact_lock id: replicas starting together migrate one at a time


class PostgresDatabase:
    """A small psycopg connection pool. The URL may choose a schema with
    `?options=-csearch_path%3Dname` (tests use a schema per run).

    A PostgreSQL that cannot be reached at start-up does not stop the gateway: every call (the
    ledger's writer tries each second) connects and migrates first, and fails fast until that works;
    then the pool opens. Callers treat those failures as they treat an outage mid-run."""

    kind = "postgresql"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        from psycopg_pool import ConnectionPool  # imported only when PostgreSQL is configured

        self._url = url
        self._timeout = timeout
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            timeout=timeout,
            open=False,
            kwargs={"connect_timeout": int(timeout)},
            check=ConnectionPool.check_connection,  # a connection cut while idle is replaced, not handed out
        )
        self._lock = threading.Lock()
        self._ready = False
        try:
            self._connect()
        except Exception as exc:
            log.warning("store: PostgreSQL unreachable at start-up (%s); serving without it until it answers", exc)

    @property
    def ready(self) -> bool:
        return self._ready

    def _connect(self) -> None:
        """Migrate on a connection of its own, then open the pool (once)."""
        if self._ready:
            return
        import psycopg

        with self._lock:
            if self._ready:
                return
            with psycopg.connect(self._url, connect_timeout=int(self._timeout)) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
                current = row[0] if row else 0
                for version, _, ddl in MIGRATIONS:
                    if version > current:
                        for statement in _statements(ddl):
                            conn.execute(statement.encode())
                        conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
            self._pool.open(wait=False)
            self._ready = True
        log.info("store: PostgreSQL connected and migrated")

    @staticmethod
    def _sql(sql: str) -> bytes:
        return sql.replace("?", "%s").encode()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._connect()
        with self._pool.connection() as conn:
            return conn.execute(self._sql(sql), params).rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connect()
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._connect()
        with self._pool.connection() as conn:
            return list(conn.execute(self._sql(sql), params).fetchall())

    def ping(self) -> None:
        self.query("SELECT 1")

    def close(self) -> None:
        if self._ready:
            self._pool.close()


def open_database(where: str | None) -> Database:
    """`postgresql://...`, a SQLite file's (already resolved) path, or None for SQLite in memory."""
    if where is not None and where.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(where)
    return SqliteDatabase(None if where is None else Path(where))
