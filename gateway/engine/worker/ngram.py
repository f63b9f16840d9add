"""Prompt lookup drafts: the tokens that followed the latest earlier occurrence of a sequence's last
n tokens, in its own prompt and output. Pure; one `NgramIndex` per decoding sequence.

An edit, a refactor, a JSON re-serialisation or an answer quoting its sources copies long spans of
its prompt: once the output's last few tokens are found earlier, what followed them there is a good
guess for what comes next, and it costs a dictionary look-up.
"""

from __future__ import annotations

from collections.abc import Iterable


class NgramIndex:
    """Every n-gram (n in min..max) of a growing token sequence, mapped to where its latest earlier
    occurrence was followed; updated as tokens are appended, so a look-up is O(max) per step."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._follow: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token that followed it

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self._index_before(len(self.tokens))
            self.tokens.append(token)

    def _index_before(self, end: int) -> None:
        """Index the n-grams that end just before position `end` (followed by the token there)."""
        tokens = self.tokens
        for n in range(self.min_n, min(self.max_n, end) + 1):
            self._follow[tuple(tokens[end - n : end])] = end

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the longest n-gram matching the sequence's end, else []."""
        tokens, length = self.tokens, len(self.tokens)
        if limit <= 0:
            return []
        for n in range(min(self.max_n, length), self.min_n - 1, -1):
            start = self._follow.get(tuple(tokens[length - n :]))
            if start is not None:
                return tokens[start : start + limit]
        return []
