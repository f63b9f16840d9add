"""A key's running requests counted across replicas (`max_concurrent` with `gateway.shared_limits`).

Each running request holds a lease in Redis: a sorted set per key, lease id → when it expires (on
Redis's clock). One Lua script takes a lease atomically when the key holds fewer than its limit;
a heartbeat pushes the expiry of this replica's leases forward while their requests run, and the
end of a request removes its lease. A replica that dies (SIGKILL, a lost node) stops its heartbeat,
so its leases expire `ttl` seconds later instead of holding the key's count for good.

A request over the limit waits, as it does for the per-replica count: it tries again when a lease of
the key ends on this replica, and at least every `poll` seconds (a lease ending on another replica).
While Redis cannot be reached, `acquire` answers None: the scheduler's per-replica count is the
limit meanwhile (`access.link` says so in /health and /metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from gateway.access.link import RedisLink

log = logging.getLogger(__name__)

# KEYS: the key's leases. ARGV: lease id, limit, ttl ms. Returns 1 (taken) or 0 (the key is at its limit).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""

# KEYS: leases sets; ARGV: ttl ms, then per key the number of its leases and their ids. XX: a lease
# that expired (Redis was away longer than ttl) or was released meanwhile is not brought back.
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  for i = 1, n do redis.call('ZADD', KEYS[k], 'XX', now + ttl, ARGV[at + i]) end
  redis.call('PEXPIRE', KEYS[k], ttl * 2)
  at = at + n + 1
end
return 0
"""


class SharedLeases:
    """Concurrency leases in Redis; `ttl`: how long a lease outlives its replica's last heartbeat."""

    def __init__(self, link: RedisLink, *, ttl: float = 15.0, poll: float = 0.25) -> None:
        self._link = link
        self._ttl_ms = max(1, int(ttl * 1000))
        self._poll = poll
        self._acquire = link.redis.register_script(_ACQUIRE)
        self._refresh = link.redis.register_script(_REFRESH)
        self._held: dict[str, set[str]] = {}  # key → lease ids held by this replica
        self._ended: dict[str, asyncio.Event] = {}  # key → set when one of its leases ends here
        self._heartbeat: asyncio.Task[None] | None = None

    def _set(self, key_id: str) -> str:
        return self._link.key(key_id, "leases")

    async def acquire(self, key_id: str, limit: int) -> str | None:
        """Wait until the key holds fewer than `limit` leases over all replicas and take one: its id,
        or None while Redis cannot be reached (the replica counts on its own). Cancelled, it keeps none
        (a lease Redis gave just as the wait was cancelled is not renewed: it expires after `ttl`)."""
        lease = uuid.uuid4().hex
        while self._link.available:
            ended = self._ended.setdefault(key_id, asyncio.Event())
            ended.clear()
            try:
                taken = await self._acquire(keys=[self._set(key_id)], args=[lease, limit, self._ttl_ms])
            except Exception as exc:
                self._link.failed(exc)
                break
            self._link.answered()
            if taken:
                self._held.setdefault(key_id, set()).add(lease)
                self._beat()
                return lease
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), self._poll)
        return None

    def release(self, key_id: str, lease: str | None) -> None:
        """The request has ended: its lease goes (in the background; synchronous callers)."""
        if lease is None:
            return
        held = self._held.get(key_id)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[key_id]
        self._link.in_background(self._remove(key_id, lease))

    async def _remove(self, key_id: str, lease: str) -> None:
        try:
            await self._link.redis.zrem(self._set(key_id), lease)
        finally:  # a request of the key waiting on this replica tries again now
            if (ended := self._ended.get(key_id)) is not None:
                ended.set()

    def _beat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.ensure_future(self._beat_forever())

    async def _beat_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self._ttl_ms / 3000)
            held = {key: list(ids) for key, ids in self._held.items() if ids}
            if not held or not self._link.available:
                continue
            args: list[int | str] = [self._ttl_ms]
            for ids in held.values():
                args += [len(ids), *ids]
            try:
                await self._refresh(keys=[self._set(key) for key in held], args=args)
            except Exception as exc:
                self._link.failed(exc)
            else:
                self._link.answered()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
