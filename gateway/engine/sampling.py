"""What constrains or reports on sampling in the worker: the sampler of one sequence (llama.cpp's
chain, under a grammar for response formats and forced tool calls), the client's logit bias, and
per-token log probabilities. Runs in the worker process."""

from __future__ import annotations

import ctypes
from typing import Any

from gateway.engine.constraint import Grammar, Matcher
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


class ConstrainedSampler:
    """llama.cpp's sampler chain under a grammar, the way llama.cpp applies one: sample from the chain
    first and check only that token; only when the grammar rejects it, mask the logits with the full
    set of allowed tokens and sample again. Most tokens pass the check, so the mask (and its walk of
    the vocabulary) is rarely computed. The chain accepts only the token finally chosen."""

    def __init__(self, chain: Any, matcher: Matcher, n_vocab: int) -> None:
        import llama_cpp
        import numpy as np
        from llama_cpp import _internals

        self._np = np
        self._llama = llama_cpp
        self._chain = chain  # a llama_cpp._internals.LlamaSampler; owns the llama_sampler
        self.matcher = matcher
        self._n_vocab = n_vocab
        self._candidates = _internals.LlamaTokenDataArray(n_vocab=n_vocab)
        self.masked = 0  # tokens that needed the full mask (for measurements)

    def sample(self, context: Any, idx: int) -> int:
        """The next token from `context`'s logits at `idx` (a llama_cpp._internals.LlamaContext)."""
        np = self._np
        logits = np.ctypeslib.as_array(self._llama.llama_get_logits_ith(context.ctx, idx), shape=(self._n_vocab,))
        token = self._pick(logits)
        if not self.matcher.try_consume(token):
            self.masked += 1
            allowed = logits.copy()  # llama.cpp's buffer stays as it is, for log probabilities
            self.matcher.apply(allowed)
            token = self._pick(allowed)
            self.matcher.consume(token)
        self._llama.llama_sampler_accept(self._chain.sampler, token)
        return token

    def _pick(self, logits: Any) -> int:
        candidates = self._candidates
        candidates.copy_logits(logits)
        self._llama.llama_sampler_apply(self._chain.sampler, ctypes.byref(candidates.candidates))
        return int(candidates.candidates_data.id[candidates.candidates.selected])


def make_sampler(llm: Any, seed: int, sampling: dict[str, Any], grammar: Grammar | None) -> Any:
    """One sequence's sampler (`.sample(context, idx) -> token`): llama.cpp's chain for `sampling`
    seeded with `seed`, under `grammar` when the output is constrained."""
    llm.set_seed(seed)
    chain = llm._init_sampler(**sampling)
    if grammar is None:
        return chain
    return ConstrainedSampler(chain, grammar.matcher(), llm.n_vocab())
