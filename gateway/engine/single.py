"""One sequence decoded on the model's main context with a sampler of ours (n = 1).

`Llama.generate` builds its own sampler chain, so a grammar checked outside llama.cpp cannot sit in
it; this loop does what it does otherwise: reuse the longest cached prefix of the prompt (at least
one token is evaluated again, so the logits are fresh), evaluate, sample, repeat. Runs in the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def reuse_prefix(llm: Any, prompt: list[int]) -> list[int]:
    """Keep the KV cache of the prompt's longest cached prefix; the tokens left to evaluate."""
    common = 0
    for cached, wanted in zip(llm.input_ids[: llm.n_tokens].tolist(), prompt, strict=False):
        if cached != wanted:
            break
        common += 1
    common = min(common, len(prompt) - 1)
    if common > 0 and llm._ctx.kv_cache_seq_rm(-1, common, -1):
        llm.n_tokens = common
        return prompt[common:]
    llm.reset()
    return list(prompt)


def decode(
    llm: Any, prompt: list[int], sampler: Any, take: Callable[[int], bool], cancelled: Callable[[], bool]
) -> bool:
    """Generate until `take(token)` says the sequence is finished; True when cancelled first."""
    tokens = reuse_prefix(llm, prompt)
    while True:
        llm.eval(tokens)
        token = sampler.sample(llm._ctx, -1)
        if cancelled():
            return True
        if take(token):
            return False
        tokens = [token]
