"""Rate windows in Redis, so that every replica counts against one limit per key.

One Lua script does a whole admission atomically on Redis's own clock: expire the minute's old
entries, see whether the request (1 request, its reserved tokens) fits, and if it does record it.
While Redis cannot be reached the replica counts on its own (`LocalCounters`) and tries Redis again
later (`access.link`)."""

from __future__ import annotations

import uuid

from gateway.access.limits import WINDOW_SECONDS, LocalCounters, Taken
from gateway.access.link import RedisLink

# KEYS: requests zset, tokens zset, amounts hash. ARGV: rpm (0: none), tpm (0: none), tokens, ticket, window.
# Returns {wait ms (-1: never fits), requests used, requests reset ms, tokens used, tokens reset ms}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[5]) * 1000
local rpm, tpm, tokens, ticket = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window)
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('HDEL', KEYS[3], unpack(old))
end
local requests = redis.call('ZCARD', KEYS[1])
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #entries, 2 do used = used + tonumber(redis.call('HGET', KEYS[3], entries[i]) or '0') end
local wait = 0
if rpm > 0 and requests + 1 > rpm then
  local nth = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
  wait = math.max(wait, tonumber(nth[2]) + window - now)
end
if tpm > 0 and used + tokens > tpm then
  if tokens > tpm then
    wait = -1
  else
    local room = tpm - used
    for i = 1, #entries, 2 do
      room = room + tonumber(redis.call('HGET', KEYS[3], entries[i]) or '0')
      if room >= tokens then
        if wait >= 0 then wait = math.max(wait, tonumber(entries[i + 1]) + window - now) end
        break
      end
    end
  end
end
if wait == 0 then
  redis.call('ZADD', KEYS[1], now, ticket)
  redis.call('ZADD', KEYS[2], now, ticket)
  redis.call('HSET', KEYS[3], ticket, tokens)
  requests = requests + 1
  used = used + tokens
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window * 2) end
end
local function reset(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return tonumber(last[2]) + window - now
end
return {wait, requests, reset(KEYS[1]), used, reset(KEYS[2])}
"""

_SETTLE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


class SharedCounters:
    """The rate windows of every key in Redis (through `link`); its local windows while Redis is away."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._take_script = link.redis.register_script(_TAKE)
        self._settle_script = link.redis.register_script(_SETTLE)
        self._local = LocalCounters()

    @property
    def healthy(self) -> bool:
        return self._link.healthy

    def _keys(self, key_id: str) -> list[str]:
        return [self._link.key(key_id, part) for part in ("requests", "tokens", "amounts")]

    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Taken:
        if self._link.available:
            ticket = f"r:{uuid.uuid4().hex}"
            try:
                args: list[str | int | float] = [rpm or 0, tpm or 0, tokens, ticket, WINDOW_SECONDS]
                wait, requests, requests_reset, used, tokens_reset = await self._take_script(
                    keys=self._keys(key_id), args=args
                )
            except Exception as exc:  # any Redis or connection error: count locally meanwhile
                self._link.failed(exc)
            else:
                self._link.answered()
                seconds = float("inf") if wait < 0 else wait / 1000
                return Taken(
                    seconds,
                    int(requests),
                    requests_reset / 1000,
                    int(used),
                    tokens_reset / 1000,
                    ticket if wait == 0 else None,
                )
        taken = await self._local.take(key_id, rpm, tpm, tokens)
        if taken.ticket is None:
            return taken
        return Taken(
            taken.wait,
            taken.requests_used,
            taken.requests_reset,
            taken.tokens_used,
            taken.tokens_reset,
            f"l:{taken.ticket}",
        )

    def settle(self, key_id: str, ticket: str, tokens: int) -> None:
        where, _, name = ticket.partition(":")
        if where == "l":
            self._local.settle(key_id, name, tokens)
            return
        self._link.in_background(self._settle_script(keys=[self._keys(key_id)[2]], args=[ticket, tokens]))
