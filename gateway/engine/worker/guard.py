"""The worker's own defences, whatever reached it: tokenizing with bounded work and a buffer of the
right size, a prompt that is never empty, a seed llama.cpp takes as given. Runs in the worker
process; small functions that any decode loop can call."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError, context_length_exceeded, invalid_request

_SEED_RANGE = 2**32 - 1  # llama.cpp seeds are uint32, and 0xFFFFFFFF (LLAMA_DEFAULT_SEED) means "random"
_SPECIAL_TOKENS_ADDED = 4  # BOS/EOS (or CLS/SEP) a tokenizer may add around the text


def sampler_seed(seed: int) -> int:
    """A request's seed (any 64-bit integer) as the uint32 llama.cpp uses, never its "random" value."""
    return seed % _SEED_RANGE


class Tokenizer:
    """Tokenizes with the work bounded by the context: a text longer in bytes than `n_ctx` times the
    vocabulary's longest token cannot fit, and is refused before any tokenizing."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._longest: int | None = None

    def longest_token_bytes(self) -> int:
        """Measured once, on the first text long enough to need it."""
        if self._longest is None:
            import llama_cpp

            vocab = self._llm._model.vocab
            longest = 1
            for token in range(self._llm.n_vocab()):
                text = llama_cpp.llama_vocab_get_text(vocab, token)
                longest = max(longest, len(text or b""))
            self._longest = longest
        return self._longest

    def tokens(self, text: str, *, add_bos: bool, special: bool, limit: int | None, param: str) -> list[int]:
        """The tokens of `text`; more than `limit` (the context size) is a 400 context_length_exceeded."""
        data = text.encode("utf-8")
        if limit is not None and len(data) > limit and len(data) > limit * self.longest_token_bytes():
            raise too_long_to_tokenize(len(data), limit, self.longest_token_bytes(), param)
        tokens = tokenize(self._llm, data, add_bos=add_bos, special=special)
        if limit is not None and len(tokens) > limit:
            raise context_length_exceeded(len(tokens), limit, param)
        return tokens


def too_long_to_tokenize(size: int, n_ctx: int, longest: int, param: str) -> GatewayError:
    return GatewayError(
        400,
        f"This model's maximum context length is {n_ctx} tokens, and none of its tokens is longer than "
        f"{longest} bytes. However, the {param} came to {size} bytes of UTF-8, more than that many tokens can "
        f"hold. Please reduce the length of the {param}.",
        param=param,
        code="context_length_exceeded",
    )


def tokenize(llm: Any, data: bytes, *, add_bos: bool, special: bool) -> list[int]:
    """llama_tokenize with a buffer sized for the worst case (a token per byte, plus the special tokens
    the tokenizer adds), so one call does it."""
    import llama_cpp

    size = len(data) + _SPECIAL_TOKENS_ADDED
    buffer = (llama_cpp.llama_token * size)()
    count = llama_cpp.llama_tokenize(llm._model.vocab, data, len(data), buffer, size, add_bos, special)
    if count < 0:  # cannot happen with this buffer; refuse rather than guess
        raise invalid_request(f"The text could not be tokenized ({-count} tokens for {size} slots).")
    return list(buffer[:count])


def nonempty_prompt(llm: Any, tokens: list[int], param: str) -> list[int]:
    """An empty prompt starts from the beginning-of-sequence token, as OpenAI's models start from
    their end-of-text token; llama.cpp cannot decode nothing."""
    if tokens:
        return tokens
    bos = int(llm.token_bos())
    if bos < 0:
        raise invalid_request("This model has no beginning-of-sequence token, so the prompt cannot be empty.", param)
    return [bos]
