"""The last requests, kept in memory for the console: the access log's fields, never content."""

from __future__ import annotations

import collections
from typing import Any

from gateway.observability.record import RequestRecord

RECENT_MAX = 200  # bounded: a busy box keeps the newest, memory stays flat


class RecentRequests:
    def __init__(self, size: int = RECENT_MAX) -> None:
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def add(self, record: RequestRecord) -> None:
        self._records.append(record.summary())

    def newest(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` records, newest first."""
        return list(reversed(self._records))[: max(limit, 0)]
