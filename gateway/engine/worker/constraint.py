"""Output constraints per sequence, in the worker: llguidance grammars over this model's vocabulary.

`Constraints` (one per worker, so one model) builds the tokenizer bridge once and caches compiled
grammars per schema; `Grammar.matcher()` gives each sequence its own `Matcher`, which checks a
sampled token, consumes it, and computes the full mask of allowed tokens only when asked (the
sampler asks only when its first pick is rejected). Independent of any decode loop: a loop calls
`check`/`consume`/`mask` per sequence per step.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from gateway import structured
from gateway.errors import invalid_request

if TYPE_CHECKING:
    import numpy as np
    from llguidance import LLMatcher, LLTokenizer

GRAMMAR_CACHE_SIZE = 64  # compiled grammars kept per model; a grammar is a few hundred KB at most


def schema_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema a constraint spec asks for: {"json_schema": {...}} or {"json_object": True}."""
    schema = spec.get("json_schema")
    return schema if isinstance(schema, dict) else structured.ANY_OBJECT


class Matcher:
    """One sequence's position in a grammar."""

    def __init__(self, matcher: LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab

    def check(self, token: int) -> bool:
        """Whether the grammar allows `token` next (nothing is consumed)."""
        return bool(self._matcher.validate_tokens([token]) == 1)

    def try_consume(self, token: int) -> bool:
        """Consume `token` if the grammar allows it; False (and nothing consumed) otherwise."""
        return bool(self._matcher.try_consume_tokens([token]) == 1)

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar rejected token {token}: {self._matcher.get_error()}")

    def mask(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Allowed next tokens, one bool per vocabulary entry."""
        import numpy as np

        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self._n_vocab].astype(bool)

    def apply(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Set the logits of every token the grammar forbids to -inf, in place."""
        import numpy as np

        logits[~self.mask()] = -np.inf

    def is_accepting(self) -> bool:
        """The text so far is a complete answer (end of generation is allowed)."""
        return bool(self._matcher.is_accepting())

    def is_stopped(self) -> bool:
        """Nothing but the end of generation can follow."""
        return bool(self._matcher.is_stopped())

    def reset(self) -> None:
        self._matcher.reset()


class Grammar:
    """A schema compiled against the model's vocabulary; shared by every sequence that uses it."""

    def __init__(self, template: LLMatcher, n_vocab: int) -> None:
        self._template = template  # in its start state; copied for each sequence
        self._n_vocab = n_vocab

    def matcher(self) -> Matcher:
        return Matcher(self._template.deep_copy(), self._n_vocab)


class Constraints:
    """Compiles constraint specs for one model, caching grammars per schema."""

    def __init__(self, vocab: Any, capacity: int = GRAMMAR_CACHE_SIZE) -> None:
        self._vocab = vocab  # a llama_vocab pointer
        self._tokenizer: LLTokenizer | None = None
        self._cache: LRUCache[str, Grammar] = LRUCache(capacity)

    def tokenizer(self) -> LLTokenizer:
        """The vocabulary as llguidance sees it, built once (about 0.2 s for 49k tokens)."""
        if self._tokenizer is None:
            import llama_cpp
            from llguidance.llamacpp import lltokenizer_from_vocab

            n_tokens = llama_cpp.llama_vocab_n_tokens(self._vocab)
            # Every end-of-generation token ends an answer, not only EOS (e.g. Gemma's <end_of_turn>).
            ends = [t for t in range(n_tokens) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
            self._tokenizer = lltokenizer_from_vocab(self._vocab, eos_token=ends or None)
        return self._tokenizer

    def compile(self, spec: dict[str, Any] | None) -> Grammar | None:
        if not spec:
            return None
        schema = schema_of(spec)
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        from llguidance import LLMatcher

        tokenizer = self.tokenizer()
        template = LLMatcher(tokenizer, structured.grammar(schema), log_level=0)
        if template.is_error():
            # The gateway checked the schema without a vocabulary; this is what only the vocabulary shows.
            raise invalid_request(f"The output schema cannot be enforced: {template.get_error()}", "response_format")
        grammar = Grammar(template, tokenizer.vocab_size)
        self._cache[key] = grammar
        return grammar
