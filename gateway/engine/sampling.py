"""What constrains or reports on sampling in the worker: grammars for response formats and forced
tool calls, the client's logit bias, and per-token log probabilities. Runs in the worker process.

`grammar_for` is the one place that turns a request's constraint into what a sequence's sampler
enforces (GBNF text today; a structured-output matcher can replace it here).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.engine.backend import Backend
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


def grammar_for(constraint: dict[str, Any] | None) -> str | None:
    """GBNF for the response format; a schema it cannot express is the client's 400."""
    if not constraint:
        return None
    from llama_cpp import llama_grammar

    if constraint.get("json_object"):
        return llama_grammar.JSON_GBNF
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(constraint["json_schema"])))
    except Exception as exc:  # the converter raises plain exceptions for schemas it cannot handle
        raise invalid_request(
            f"response_format.json_schema cannot be enforced with a grammar: {type(exc).__name__}: {exc}",
            param="response_format",
        ) from None
