"""What reports on or biases sampling in the worker: the client's logit bias and per-token log
probabilities. Runs in the worker process. Output constraints are engine/constraint.py's grammars,
which each sequence's sampler (engine/llamacpp.py) checks token by token."""

from __future__ import annotations

from typing import Any

from gateway.engine.worker.backend import Backend
from gateway.errors import invalid_request


def logit_bias(bias: dict[str, float] | None, n_vocab: int) -> dict[int, float] | None:
    """The client's bias per token id (JSON keys are strings), ids checked against the vocabulary."""
    if not bias:
        return None
    ids = {int(k): float(v) for k, v in bias.items()}
    if any(not 0 <= token < n_vocab for token in ids):
        raise invalid_request(f"logit_bias has token ids outside 0..{n_vocab - 1}.", param="logit_bias")
    return ids


class LogprobScorer:
    """Log probabilities of each sampled token (and the most likely alternatives) from the logits
    llama.cpp kept for its batch row: no `logits_all`, which would cost n_ctx x vocab x 4 bytes."""

    def __init__(self, backend: Backend, top: int) -> None:
        import numpy as np

        self._np = np
        self._backend = backend
        self._top = top

    def entry(self, token: int, piece: bytes, row: int) -> dict[str, Any]:
        np = self._np
        logits = np.asarray(self._backend.logits(row), dtype=np.float64)
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        entry = self._describe(piece, float(logprobs[token]))
        alternatives = []
        if self._top:
            best = np.argpartition(-logprobs, self._top)[: self._top]
            for candidate in best[np.argsort(-logprobs[best])]:
                raw = self._backend.piece(int(candidate))
                alternatives.append(self._describe(raw, float(logprobs[candidate])))
        entry["top_logprobs"] = alternatives
        return entry

    @staticmethod
    def _describe(piece: bytes, logprob: float) -> dict[str, Any]:
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}
