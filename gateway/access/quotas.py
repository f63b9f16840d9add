"""Quota counters in Redis, so that replicas admitting at the same moment cannot pass a key's quota
together (`gateway.shared_limits`).

One counter per key and period (`<prefix>:<key>:quota:<period start>`): the tokens used and reserved
in that period over every replica. A request reserves its estimate atomically (only when it fits) and
settles to what it used when it ends. An absent counter (a new period, Redis restarted or flushed) is
seeded from the usage ledger, which stays the truth; it expires at the end of its period. While
Redis cannot be reached, `reserve` answers None and the limiter counts as without Redis; the settles
Redis missed meanwhile are applied when it answers again, before the next reservation (to counters
that still exist: one that Redis lost is seeded afresh from the ledger, which has those requests).

The periods (`period_bounds`) and the refusal (`quota_error`) are the limiter's too, with or without Redis."""

from __future__ import annotations

import collections
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.access.keys import Principal
from gateway.access.link import RedisLink
from gateway.errors import GatewayError

# KEYS: the counter. ARGV: limit, tokens, seed (-1: none given), expiry (epoch ms).
# Returns {1 (reserved) | 0 (over the limit) | -1 (absent: seed it), used and reserved after}.
_RESERVE = """
local used = redis.call('GET', KEYS[1])
if not used then
  if tonumber(ARGV[3]) < 0 then return {-1, 0} end
  redis.call('SET', KEYS[1], ARGV[3], 'NX')
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
  used = redis.call('GET', KEYS[1])
end
used = tonumber(used)
local tokens = tonumber(ARGV[2])
if used + tokens > tonumber(ARGV[1]) then return {0, used} end
return {1, redis.call('INCRBY', KEYS[1], tokens)}
"""

# A counter that expired (its period ended) or was flushed is not brought back by a late settle.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 0
"""


def period_bounds(per: str, now: float) -> tuple[float, float]:
    """The UTC calendar period (day, week from Monday, month) around `now`, as epoch seconds."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if per == "day":
        start, end = today, today + datetime.timedelta(days=1)
    elif per == "week":
        start = today - datetime.timedelta(days=today.weekday())
        end = start + datetime.timedelta(days=7)
    else:
        start = today.replace(day=1)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()


def quota_error(principal: Principal, used: int, tokens: int, end: float) -> GatewayError:
    """429 insufficient_quota: what the key may use, what is used or reserved, when it resets."""
    assert principal.quota is not None
    reset = datetime.datetime.fromtimestamp(end, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return GatewayError(
        429,
        f"You exceeded your current quota: key '{principal.key_id}' may use {principal.quota.tokens} tokens per "
        f"{principal.quota.per} ({used} used or reserved, this request may take {tokens}); it resets at {reset}.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


MISSED_MAX = 100_000  # settles kept while Redis is away (the oldest go beyond)


@dataclass(frozen=True)
class Reserved:
    """What `reserve` said: `ok` (the tokens are reserved in `counter`) and the period's tokens used
    and reserved (after this request when ok)."""

    ok: bool
    used: int
    counter: str


class SharedQuotas:
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._reserve = link.redis.register_script(_RESERVE)
        self._settle = link.redis.register_script(_SETTLE)
        self._missed: collections.deque[tuple[str, int]] = collections.deque(maxlen=MISSED_MAX)

    async def reserve(
        self, key_id: str, start: float, end: float, limit: int, tokens: int, seed: Callable[[], Awaitable[int | None]]
    ) -> Reserved | None:
        """Reserve `tokens` of the key's quota for the period [start, end) if they fit; `seed` reads
        the ledger's total for an absent counter (None: unknown). None: Redis cannot be reached, or
        the counter is absent and cannot be seeded."""
        if not self._link.available:
            return None
        counter = self._link.key(key_id, f"quota:{int(start)}")
        args = [limit, tokens, -1, int(end * 1000)]
        try:
            while self._missed:
                await self._settle(keys=[self._missed[0][0]], args=[self._missed[0][1]])
                self._missed.popleft()
            verdict, used = await self._reserve(keys=[counter], args=args)
        except Exception as exc:
            self._link.failed(exc)
            return None
        if verdict == -1:
            total = await seed()
            if total is None:  # the ledger cannot say what the period used: count as without Redis
                return None
            args[2] = max(0, total)
            try:
                verdict, used = await self._reserve(keys=[counter], args=args)
            except Exception as exc:
                self._link.failed(exc)
                return None
        self._link.answered()
        return Reserved(verdict == 1, int(used), counter)

    def settle(self, counter: str, delta: int) -> None:
        """Correct a reservation by `delta` tokens (what was used less what was reserved)."""
        if delta:
            self._link.in_background(self._apply(counter, delta))

    async def _apply(self, counter: str, delta: int) -> None:
        try:
            await self._settle(keys=[counter], args=[delta])
        except Exception:
            self._missed.append((counter, delta))  # applied when Redis answers again
            raise
