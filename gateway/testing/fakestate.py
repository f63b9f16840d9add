"""Sequence states for the fake llama.cpp (`fakellama.py`), as llama_state_seq_get_data and
llama_state_seq_set_data give them: a sequence's cells as bytes, and back into another sequence."""

from __future__ import annotations

import json

STATE_MAGIC = b"FAKEKV1 "
IMAGE_CELL = -1  # what the fake keeps of an image position's cell (its embedding is not a token)


class FakeStates:
    """Mixed into FakeLlama: its pool's cells (which sequences hold each, the token written there)."""

    _cells: list[set[int]]
    _positions: dict[int, dict[int, int]]  # seq -> pos -> cell
    _cell_tokens: dict[int, int]  # cell -> the token written there
    _replied: set[int]  # sequences holding reply tokens (`_reply_tokens`)
    _reply_tokens: range
    restores: list[tuple[int, int]]  # (sequence, tokens) of every state loaded

    def tokens_in(self, seq: int) -> list[int]:
        """The tokens a sequence's cells hold, by position."""
        positions = self._positions.get(seq, {})
        return [self._cell_tokens[positions[pos]] for pos in sorted(positions)]

    def seq_state(self, seq: int) -> bytes:
        """llama.cpp's state of one sequence, faked: its tokens by position (the "KV" of this model)."""
        return STATE_MAGIC + json.dumps(self.tokens_in(seq)).encode()

    def set_seq_state(self, seq: int, state: bytes) -> bool:
        """As llama_state_seq_set_data: the sequence must be empty, the bytes sound, and free cells there."""
        if not state.startswith(STATE_MAGIC) or self._positions.get(seq):
            return False
        try:
            tokens = json.loads(state[len(STATE_MAGIC) :])
        except ValueError:
            return False
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return False
        free = [i for i, cell in enumerate(self._cells) if not cell]
        if len(free) < len(tokens):
            return False
        positions = self._positions.setdefault(seq, {})
        for pos, (token, cell) in enumerate(zip(tokens, free, strict=False)):
            positions[pos] = cell
            self._cells[cell].add(seq)
            self._cell_tokens[cell] = token
            if token in self._reply_tokens:
                self._replied.add(seq)
        self.restores.append((seq, len(tokens)))
        return True
