"""Stop-sequence matching over streamed text: never emits text that might begin a stop sequence."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back what is safe to send and whether a stop sequence was hit.

    Text that could be the start of a stop sequence is held back until the next piece decides it,
    so a client never sees part of a stop sequence.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.matched: str | None = None  # the stop sequence hit (the earliest; the first listed on a tie)

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        self._pending += text
        found = [(i, n) for n, i in enumerate(self._pending.find(s) for s in self._stops) if i >= 0]
        if found:
            cut, which = min(found)
            out, self._pending = self._pending[:cut], ""
            self.matched = self._stops[which]
            return out, True
        hold = self._longest_partial_suffix()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _longest_partial_suffix(self) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best
