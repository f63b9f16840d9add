"""A draft model for speculative decoding, checked from the headers before any worker loads it: its
tokens must be the target's, id for id (the worker compares every token's text once both are loaded)."""

from __future__ import annotations

from gateway.gguf.info import GGUFInfo

# Header keys that must match: the tokenizer kind and the special tokens a draft's ids are read against.
_SAME_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
)


def draft_problem(model: GGUFInfo, draft: GGUFInfo) -> str | None:
    """Why `draft` cannot draft for `model`, or None when its vocabulary looks the same."""
    if draft.vocab_size != model.vocab_size:
        return f"its vocabulary has {draft.vocab_size} tokens, the model's {model.vocab_size}: a draft needs the same"
    for key in _SAME_KEYS:
        ours, theirs = model.metadata.get(key), draft.metadata.get(key)
        if ours != theirs:
            return f"its {key} is {theirs!r}, the model's {ours!r}: a draft needs the same vocabulary"
    return None
