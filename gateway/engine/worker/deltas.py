"""Coalesces streamed text so that a fast model sends one message per interval, not one per token.

Each message costs the gateway and the client a wake-up, a JSON chunk and a socket write on the
cores the model is using. The first piece goes out at once (time to first token is unchanged);
later pieces wait at most `interval` seconds. Per-token log probabilities travel with their text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Emit = Callable[[str, list[dict[str, Any]] | None], None]


class DeltaBatcher:
    def __init__(self, emit: Emit, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._interval = interval
        self._clock = clock
        self._text = ""
        self._entries: list[dict[str, Any]] | None = None
        self._last: float | None = None

    def add(self, text: str, entries: list[dict[str, Any]] | None = None) -> None:
        self._text += text
        if entries:
            self._entries = [*(self._entries or []), *entries]
        if not self._text and not self._entries:
            return
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            self._send()
            self._last = now

    def flush(self) -> None:
        if self._text or self._entries:
            self._send()

    def _send(self) -> None:
        self._emit(self._text, self._entries)
        self._text, self._entries = "", None
