"""A key's limits: requests and tokens per minute (sliding one-minute windows) and a token quota per
day, week or month (its state read from the usage ledger, so a restart forgets nothing).

A request is admitted with what it may cost (`access.estimate`): its prompt counted and its
completion reserved at `max_tokens`; when it ends the reservation is settled to what it really used,
and the unused part is given back. Limits are read from the key on every admission, so a reload that
changes them applies at once, while requests already admitted keep their reservation.

`Counters` is where the windows live: in this process (`LocalCounters`), or in Redis
(`access.shared.SharedCounters`) so that replicas enforce one limit. With Redis the quota is counted
there too (`access.quotas`), reservations included, so replicas cannot pass it together; the ledger
seeds that counter and is the fallback while Redis is away."""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.access.keys import Principal
from gateway.access.quotas import SharedQuotas, period_bounds, quota_error
from gateway.errors import RATE_LIMIT, GatewayError

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
QUOTA_REFRESH_SECONDS = 5.0  # how stale a quota's ledger total may be (other replicas' use shows up then)


@dataclass(frozen=True)
class Taken:
    """What the windows said for one admission: seconds to wait (0: taken), and the figures for the
    x-ratelimit headers (used after this request, seconds until the window is empty)."""

    wait: float
    requests_used: int
    requests_reset: float
    tokens_used: int
    tokens_reset: float
    ticket: str | None = None  # the token reservation, to settle when the request ends


class Counters(Protocol):
    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Taken:
        """Count a request of `tokens` (reserved) unless a limit is reached; then take nothing and
        say how long until it fits."""
        ...

    def settle(self, key_id: str, ticket: str, tokens: int) -> None:
        """Replace a reservation by what the request really used (called as a request ends, from
        synchronous code: a remote store does it in the background)."""
        ...


class Window:
    """Amounts spent in the last minute, oldest first; an entry may be settled to another amount."""

    def __init__(self) -> None:
        self.entries: collections.deque[list[float]] = collections.deque()  # [time, amount]

    def used(self, now: float) -> float:
        while self.entries and now - self.entries[0][0] >= WINDOW_SECONDS:
            self.entries.popleft()
        return sum(amount for _, amount in self.entries)

    def wait(self, now: float, amount: float, limit: int) -> float:
        """Seconds until `amount` more fits under `limit` (0: now; inf: never, it is larger than the limit)."""
        if amount > limit:
            return math.inf
        room = limit - self.used(now)
        for at, spent in self.entries:
            if room >= amount:
                break
            room += spent
            if room >= amount:
                return at + WINDOW_SECONDS - now
        return 0.0 if room >= amount else math.inf

    def reset(self, now: float) -> float:
        return self.entries[-1][0] + WINDOW_SECONDS - now if self.entries else 0.0


@dataclass
class _KeyWindows:
    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    open: dict[str, list[float]] = field(default_factory=dict)  # ticket → its token window entry


class LocalCounters:
    """The windows of this process only (each replica counts its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyWindows] = {}
        self._tickets = 0

    async def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Taken:
        now = self._clock()
        windows = self._keys.setdefault(key_id, _KeyWindows())
        wait = max(
            windows.requests.wait(now, 1, rpm) if rpm is not None else 0.0,
            windows.tokens.wait(now, tokens, tpm) if tpm is not None else 0.0,
        )
        ticket = None
        if wait == 0:
            windows.requests.entries.append([now, 1])
            entry = [now, float(tokens)]
            windows.tokens.entries.append(entry)
            self._tickets += 1
            ticket = str(self._tickets)
            windows.open[ticket] = entry
        return Taken(
            wait,
            int(windows.requests.used(now)),
            windows.requests.reset(now),
            int(windows.tokens.used(now)),
            windows.tokens.reset(now),
            ticket,
        )

    def settle(self, key_id: str, ticket: str, tokens: int) -> None:
        windows = self._keys.get(key_id)
        entry = windows.open.pop(ticket, None) if windows is not None else None
        if entry is not None:
            entry[1] = float(tokens)


@dataclass
class _Book:
    """A key's quota in the current period: the ledger's total when last read, plus what this process
    saw end since, plus what requests under way have reserved."""

    start: float
    ledger: int = 0
    local: int = 0
    read_at: float = -math.inf
    read: bool = False  # the ledger's total was read at least once this period


UsedSince = Callable[[str, float], Awaitable[int]]


@dataclass
class Ticket:
    """An admitted request of a limited key: what to settle when it ends, and its headers."""

    key_id: str
    reserved: int
    counter_ticket: str | None
    headers: list[tuple[str, str]]
    quota_counter: str | None = None  # the shared quota counter holding the reservation


@dataclass
class Admission:
    ticket: Ticket | None
    error: GatewayError | None
    headers: list[tuple[str, str]]


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    return f"{int(seconds // 60)}m{round(seconds % 60, 3):g}s"


def _headers(principal: Principal, taken: Taken) -> list[tuple[str, str]]:
    headers = []
    if principal.rpm is not None:
        headers += [
            ("x-ratelimit-limit-requests", str(principal.rpm)),
            ("x-ratelimit-remaining-requests", str(max(0, principal.rpm - taken.requests_used))),
            ("x-ratelimit-reset-requests", duration(taken.requests_reset)),
        ]
    if principal.tpm is not None:
        headers += [
            ("x-ratelimit-limit-tokens", str(principal.tpm)),
            ("x-ratelimit-remaining-tokens", str(max(0, principal.tpm - taken.tokens_used))),
            ("x-ratelimit-reset-tokens", duration(taken.tokens_reset)),
        ]
    return headers


class Limiter:
    """Admits and settles the requests of limited keys. `used_since(key, epoch)` reads a key's tokens
    from the usage ledger (none: quotas count this process's requests only)."""

    def __init__(
        self,
        counters: Counters | None = None,
        used_since: UsedSince | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        quotas: SharedQuotas | None = None,
    ) -> None:
        self.counters: Counters = counters or LocalCounters(clock)
        self.quotas = quotas
        self._used_since = used_since
        self._wall = wall
        self._clock = clock
        self._books: dict[str, _Book] = {}
        self._reserved: dict[str, int] = collections.defaultdict(int)

    async def _quota_used(self, key_id: str, per: str) -> tuple[int, float]:
        start, end = period_bounds(per, self._wall())
        book = self._books.get(key_id)
        now = self._clock()
        if book is None or book.start != start:
            book = self._books[key_id] = _Book(start)
        if self._used_since is not None and now - book.read_at >= QUOTA_REFRESH_SECONDS:
            try:
                total = await self._used_since(key_id, start)
            except Exception as exc:  # the ledger is unreachable: go on with what this process counted
                log.warning("quota of key %s: cannot read the usage ledger (%s); counting locally", key_id, exc)
                book.read_at = now
            else:
                book = self._books[key_id] = _Book(start, total, 0, now, True)
        return book.ledger + book.local + self._reserved[key_id], end

    async def admit(self, principal: Principal, tokens: int) -> Admission:
        """Admit a request that may cost `tokens`, or say which limit it is over."""
        key = principal.key_id
        counter = None
        if (quota := principal.quota) is not None:
            start, end = period_bounds(quota.per, self._wall())
            shared = None
            if self.quotas is not None:
                shared = await self.quotas.reserve(
                    key, start, end, quota.tokens, tokens, lambda: self._seed(key, quota.per)
                )
            if shared is not None:
                used, fits, counter = shared.used, shared.ok, shared.counter if shared.ok else None
            else:  # no Redis (or it is away): the ledger's total and this process's reservations
                used, end = await self._quota_used(key, quota.per)
                fits = used + tokens <= quota.tokens
            if not fits:
                return Admission(None, quota_error(principal, used, tokens, end), [])
        taken = await self.counters.take(key, principal.rpm, principal.tpm, tokens)
        headers = _headers(principal, taken)
        if taken.ticket is None:
            if counter is not None and self.quotas is not None:
                self.quotas.settle(counter, -tokens)  # not admitted after all
            return Admission(None, self._rate_error(principal, tokens, taken.wait), headers)
        self._reserved[key] += tokens
        return Admission(Ticket(key, tokens, taken.ticket, headers, counter), None, headers)

    async def _seed(self, key_id: str, per: str) -> int | None:
        """A new shared quota counter starts from the ledger's total (with this process's use since
        and its reservations under way, which settle into that counter); None while that total is
        unknown (the ledger unreachable since the period began here): no counter is better than a
        counter that forgot the period's use."""
        used, _ = await self._quota_used(key_id, per)
        book = self._books[key_id]
        return used if book.read or self._used_since is None else None

    def _rate_error(self, principal: Principal, tokens: int, wait: float) -> GatewayError:
        if math.isinf(wait):
            message = (
                f"Request too large for key '{principal.key_id}': it may take {tokens} tokens "
                f"(prompt and max_tokens), over its limit of {principal.tpm} tokens per minute."
            )
            return GatewayError(429, message, type=RATE_LIMIT, code="rate_limit_exceeded")
        limits = [f"{principal.rpm} requests per minute"] if principal.rpm is not None else []
        limits += [f"{principal.tpm} tokens per minute"] if principal.tpm is not None else []
        message = (
            f"Rate limit reached for key '{principal.key_id}' ({', '.join(limits)}); try again in {duration(wait)}."
        )
        return GatewayError(429, message, type=RATE_LIMIT, code="rate_limit_exceeded", retry_after=wait)

    def settle(self, ticket: Ticket, tokens: int) -> None:
        """The request has ended having used `tokens`: the reservation becomes that."""
        self._reserved[ticket.key_id] -= ticket.reserved
        if ticket.quota_counter is not None and self.quotas is not None:
            self.quotas.settle(ticket.quota_counter, tokens - ticket.reserved)
        if ticket.counter_ticket is not None:
            self.counters.settle(ticket.key_id, ticket.counter_ticket, tokens)
        self.spent(ticket.key_id, tokens)

    def spent(self, key_id: str, tokens: int) -> None:
        """Tokens a key used, counted toward its quota until the ledger's total is read again."""
        book = self._books.get(key_id)
        if book is not None:
            book.local += tokens
