"""Coalesces streamed text so that a fast model sends one message per interval, not one per token.

Each message costs the gateway and the client a wake-up, a JSON chunk and a socket write on the
cores the model is using. The first piece goes out at once (time to first token is unchanged);
later pieces wait at most `interval` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class DeltaBatcher:
    def __init__(
        self, emit: Callable[[str], None], interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._clock = clock
        self._pending = ""
        self._last: float | None = None

    def add(self, text: str) -> None:
        if not text:
            return
        self._pending += text
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            self._emit(self._pending)
            self._pending = ""
            self._last = now

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = ""
