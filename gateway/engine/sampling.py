"""What constrains or reports on sampling in the worker: grammars for response formats and forced
tool calls, the client's logit bias, and per-token log probabilities. Runs in the worker process."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import invalid_request


def logit_bias_processor(llm: Any, bias: dict[str, float] | None) -> Any:
    """A logits processor adding the client's bias per token id (ids checked against the vocabulary)."""
    if not bias:
        return None
    import numpy as np
    from llama_cpp import LogitsProcessorList

    n_vocab = llm.n_vocab()
    ids = np.array([int(k) for k in bias], dtype=np.intc)
    if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
        raise invalid_request(f"logit_bias has token ids outside 0..{n_vocab - 1}.", param="logit_bias")
    values = np.array(list(bias.values()), dtype=np.single)

    def apply(input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores

    return LogitsProcessorList([apply])


class LogprobScorer:
    """Log probabilities of each sampled token (and the most likely alternatives) from the logits
    llama.cpp kept for the last position: no `logits_all`, which would cost n_ctx x vocab x 4 bytes."""

    def __init__(self, llm: Any, top: int) -> None:
        import llama_cpp
        import numpy as np

        self._np = np
        self._llm = llm
        self._top = top
        self._n_vocab = llm.n_vocab()
        self._logits_ith = llama_cpp.llama_get_logits_ith

    def entry(self, token: int, piece: bytes, ctx: Any = None, idx: int = -1) -> dict[str, Any]:
        """`ctx`/`idx`: where the logits that chose `token` are (default: the main context's last)."""
        np = self._np
        source = self._llm.ctx if ctx is None else ctx
        logits = np.ctypeslib.as_array(self._logits_ith(source, idx), shape=(self._n_vocab,))
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        entry = self._describe(token, piece, float(logprobs[token]))
        alternatives = []
        if self._top:
            best = np.argpartition(-logprobs, self._top)[: self._top]
            for candidate in best[np.argsort(-logprobs[best])]:
                candidate = int(candidate)
                raw = self._llm.detokenize([candidate])
                alternatives.append(self._describe(candidate, raw, float(logprobs[candidate])))
        entry["top_logprobs"] = alternatives
        return entry

    @staticmethod
    def _describe(token: int, piece: bytes, logprob: float) -> dict[str, Any]:
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}


def grammar_for(constraint: dict[str, Any] | None) -> Any:
    """A llama.cpp grammar for the response format; a schema it cannot express is the client's 400."""
    if not constraint:
        return None
    from llama_cpp import llama_grammar

    if constraint.get("json_object"):
        return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
    try:
        text = json.dumps(constraint["json_schema"])
        return llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)
    except Exception as exc:  # the converter raises plain exceptions for schemas it cannot handle
        raise invalid_request(
            f"response_format.json_schema cannot be enforced with a grammar: {type(exc).__name__}: {exc}",
            param="response_format",
        ) from None
