"""Embedding inputs with a model loaded in embedding mode. Runs in the worker process."""

from __future__ import annotations

from typing import Any

from gateway.engine.guard import Tokenizer
from gateway.errors import context_length_exceeded, invalid_request

POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}


def embed(llm: Any, inputs: list[str | list[int]], tokenizer: Tokenizer) -> tuple[list[list[float]], int]:
    """One normalised vector per input (text or token ids), and the tokens read. Inputs longer than the
    context are refused, not cut."""
    import llama_cpp
    import numpy as np

    n_ctx, n_embd, n_vocab = llm.n_ctx(), llm.n_embd(), llm.n_vocab()
    batches: list[list[list[int]]] = [[]]
    used = 0
    total = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            tokens = tokenizer.tokens(item, add_bos=True, special=False, limit=n_ctx, param="input")
        else:
            tokens = item
        if not tokens:
            raise invalid_request(f"input[{index}] is empty.", param="input")
        if len(tokens) > n_ctx:
            raise context_length_exceeded(len(tokens), n_ctx, "input")
        if any(not 0 <= t < n_vocab for t in tokens):
            raise invalid_request(f"input[{index}] has token ids outside 0..{n_vocab - 1}.", param="input")
        if used + len(tokens) > n_ctx or len(batches[-1]) >= llm.context_params.n_seq_max:
            batches.append([])
            used = 0
        batches[-1].append(tokens)
        used += len(tokens)
        total += len(tokens)
    vectors: list[list[float]] = []
    for batch in batches:
        llm._batch.reset()
        for seq, tokens in enumerate(batch):
            llm._batch.add_sequence(tokens, seq, True)
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(llm._batch)
        for seq in range(len(batch)):
            vector = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(llm.ctx, seq), shape=(n_embd,))
            norm = float(np.linalg.norm(vector)) or 1.0
            vectors.append((vector / norm).tolist())
    llm._batch.reset()
    llm._ctx.kv_cache_clear()
    return vectors, total
