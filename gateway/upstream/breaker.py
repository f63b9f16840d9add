"""A circuit breaker per upstream server: after `failures` failures in a row, the server gets no
requests for `cooldown` seconds; then one trial request decides (half-open). Pure bookkeeping with an
injectable clock, so its rules are unit-tested without waiting."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Circuit(str, enum.Enum):
    CLOSED = "closed"  # requests flow
    OPEN = "open"  # failing: skipped until the cooldown ends
    HALF_OPEN = "half_open"  # cooled down: one trial request is in flight


class CircuitBreaker:
    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._streak = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> Circuit:
        if self._opened_at is None:
            return Circuit.CLOSED
        if self._trial:
            return Circuit.HALF_OPEN
        return Circuit.OPEN if self._clock() - self._opened_at < self.cooldown else Circuit.HALF_OPEN

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial through (0 when it would now)."""
        if self._opened_at is None or self._trial:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a request may go to this server now; a cooled-down circuit lets exactly one through."""
        if self._opened_at is None:
            return True
        if self._trial or self._clock() - self._opened_at < self.cooldown:
            return False
        self._trial = True
        return True

    def succeeded(self) -> None:
        self._streak = 0
        self._opened_at = None
        self._trial = False

    def failed(self) -> None:
        self._streak += 1
        if self._trial or self._streak >= self.failures:
            self._opened_at = self._clock()
        self._trial = False

    def release(self) -> None:
        """A request allowed through ended neither way (the client left): let the next one try."""
        self._trial = False
