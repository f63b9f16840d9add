"""The one Redis connection behind `gateway.shared_limits`, shared by the rate windows
(`access.shared`), the quota counters (`access.quotas`) and the concurrency leases
(`access.leases`), with one notion of whether Redis answers: after a failure every user counts per
replica (or from the ledger) and Redis is tried again after `retry` seconds; `healthy` says which is
in use (for /health and /metrics)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class RedisLink:
    """`url`: redis://...; `prefix` keeps the keys of one deployment (or one test run) apart."""

    def __init__(self, url: str, *, prefix: str = "gateway", timeout: float = 1.0, retry: float = 5.0) -> None:
        import redis.asyncio as redis  # imported only when shared limits are configured

        self.redis: Any = redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.prefix = prefix
        self._retry = retry
        self._down_until = 0.0
        self.healthy = True
        self._background: set[asyncio.Task[None]] = set()

    def key(self, key_id: str, part: str) -> str:
        return f"{self.prefix}:{key_id}:{part}"

    @property
    def available(self) -> bool:
        """Worth trying now (it answered last time, or the retry delay has passed)."""
        return time.monotonic() >= self._down_until

    def failed(self, exc: Exception) -> None:
        if self.healthy:
            log.warning("shared limits: Redis unreachable (%s); counting per replica", exc)
        self.healthy = False
        self._down_until = time.monotonic() + self._retry

    def answered(self) -> None:
        if not self.healthy:
            log.warning("shared limits: Redis answers again")
        self.healthy = True

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a settle, a release: called from synchronous code as a request ends) without
        waiting for it; a failure marks Redis down."""

        async def run() -> None:
            try:
                await work
            except Exception as exc:
                self.failed(exc)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=2)
        await self.redis.aclose()
