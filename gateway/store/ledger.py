"""The usage ledger: one row per finished request, written off the request path.

`add` only appends to a bounded in-memory queue; a thread writes the queue in batches every
`interval` (and, while the database is away with nothing to write, probes it). While the database
cannot be written the rows stay queued (the spill, at most
`spill_max`; beyond it the oldest are dropped and counted) and are written when it answers again.
Each row has its own id and is inserted with ON CONFLICT DO NOTHING, so a batch retried after a
failure that did commit is not counted twice. `close` writes what is left (SIGTERM); what the
database still refuses then goes to `spill_file` (JSON lines, when given), read back at the next start."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.store.database import Database

log = logging.getLogger(__name__)

GROUPS = {"key": "key_id", "model": "model", "day": "day"}
_INSERT = (
    "INSERT INTO usage (row_id, at, day, key_id, model, endpoint, status, prompt_tokens, completion_tokens, "
    "reasoning_tokens, cached_tokens, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (row_id) DO NOTHING"
)


@dataclass(frozen=True)
class UsageRow:
    at: float  # epoch seconds, when the request ended
    key_id: str
    model: str
    endpoint: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    duration: float
    row_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def values(self) -> tuple[Any, ...]:
        day = datetime.datetime.fromtimestamp(self.at, datetime.UTC).strftime("%Y-%m-%d")
        return (
            self.row_id,
            self.at,
            day,
            self.key_id,
            self.model,
            self.endpoint,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            self.reasoning_tokens,
            self.cached_tokens,
            self.duration,
        )


class Ledger:
    def __init__(
        self,
        db: Database,
        *,
        interval: float = 1.0,
        batch: int = 500,
        spill_max: int = 100_000,
        spill_file: Path | None = None,
    ) -> None:
        self.db = db
        self._spill_file = spill_file
        self._interval = interval
        self._batch = batch
        self._spill_max = spill_max
        self._queue: collections.deque[UsageRow] = collections.deque()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.dropped = 0  # rows lost because the spill was full
        self.healthy = db.ready  # the last write (or probe) reached the database
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        if spill_file is not None and spill_file.exists():
            lines = spill_file.read_text(encoding="utf-8").splitlines()
            for line in lines:
                self.add(UsageRow(**json.loads(line)))
            spill_file.unlink()
            log.warning("usage ledger: %d rows from %s to write", len(lines), spill_file)

    def start(self) -> None:
        """Write in the background from now on (until then rows wait for `flush` or `close`)."""
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, row: UsageRow) -> None:
        with self._lock:
            self._queue.append(row)
            while len(self._queue) > self._spill_max:
                self._queue.popleft()
                self.dropped += 1

    def _run(self) -> None:
        while not self._stop:
            if self.flush() and not self.healthy:
                self._probe()  # nothing to write, but /health should see the database come back
            self._wake.wait(self._interval)
            self._wake.clear()

    def _probe(self) -> None:
        try:
            self.db.ping()  # (a PostgreSQL unreachable at start-up is migrated now)
        except Exception:
            return
        log.warning("usage ledger: the database answers again")
        self.healthy = True

    def flush(self) -> bool:
        """Write every queued row now; False when the database did not take them (they stay queued)."""
        with self._write_lock:
            while self._queue:
                with self._lock:
                    rows = [self._queue[i] for i in range(min(self._batch, len(self._queue)))]
                try:
                    self.db.execute_many(_INSERT, [row.values() for row in rows])
                except Exception as exc:
                    if self.healthy:
                        log.warning("usage ledger: cannot write (%s); keeping %d rows to retry", exc, len(self._queue))
                    self.healthy = False
                    return False
                with self._lock:
                    for _ in rows:  # the written rows are still the oldest: add() only appends
                        if self._queue:
                            self._queue.popleft()
                if not self.healthy:
                    log.warning("usage ledger: writing again")
                self.healthy = True
            return True

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.flush():
            return
        if self._spill_file is None:
            log.error("usage ledger: %d rows could not be written before exit", len(self._queue))
            return
        self._spill_file.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_file.open("a", encoding="utf-8") as out:
            for row in self._queue:
                out.write(json.dumps(dataclasses.asdict(row)) + "\n")
        log.warning("usage ledger: %d rows kept in %s until the next start", len(self._queue), self._spill_file)

    def tokens_since(self, key_id: str, since: float) -> int:
        """Prompt + completion tokens a key used since `since` (epoch seconds), as written so far."""
        rows = self.db.query(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage WHERE key_id = ? AND at >= ?",
            (key_id, since),
        )
        return int(rows[0][0])

    def usage(self, since: float | None, until: float | None, group_by: list[str]) -> list[dict[str, Any]]:
        """Requests and tokens between `since` and `until` (epoch seconds, either open), grouped by
        any of key, model, day (UTC)."""
        self.flush()  # what has ended so far is in the answer
        columns = [GROUPS[g] for g in group_by]
        select = ", ".join(
            [
                *columns,
                "COUNT(*)",
                "SUM(prompt_tokens)",
                "SUM(completion_tokens)",
                "SUM(reasoning_tokens)",
                "SUM(cached_tokens)",
            ]
        )
        where, params = [], []
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        sql = f"SELECT {select} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if columns:
            sql += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
        out = []
        for row in self.db.query(sql, params):
            item: dict[str, Any] = dict(zip(group_by, row[: len(columns)], strict=True))
            figures = row[len(columns) :]
            if figures[0] == 0:
                continue  # no grouping and no rows
            names = ["requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens"]
            item.update({name: int(value or 0) for name, value in zip(names, figures, strict=True)})
            out.append(item)
        return out
