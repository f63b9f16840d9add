"""Embedding inputs with a model loaded in embedding mode. Runs in the worker process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from gateway.engine.wire import Call, Channel, Embed, Failed, Result, Shutdown
from gateway.engine.worker.backend import cache_type_arguments, device_arguments, plain_weight_buffers
from gateway.engine.worker.guard import Tokenizer
from gateway.errors import GatewayError, context_length_exceeded, internal_error, invalid_request

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


def load_embedding(config: dict[str, Any]) -> Any:
    import llama_cpp

    with plain_weight_buffers(llama_cpp):
        llm = _llama(llama_cpp, config)
    if int(llm.pooling_type()) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        raise ValueError("this model pools no embedding; set model.pooling (mean, cls or last) in models.yaml")
    return llm


def _llama(llama_cpp: Any, config: dict[str, Any]) -> Any:
    # An input is embedded in one batch, so a batch holds a whole context; pooling gives one vector.
    return llama_cpp.Llama(
        model_path=config["path"],
        n_ctx=config["n_ctx"],
        **device_arguments(config),  # n_gpu_layers, and main_gpu, tensor_split where the scheduler placed it
        n_threads=config["n_threads"],
        use_mmap=config["use_mmap"],
        flash_attn=config.get("flash_attn") == "on",  # ModelEntry.flash_attention: no "auto" here
        **cache_type_arguments(llama_cpp, config),  # type_k, type_v
        verbose=config["verbose"],
        embedding=True,
        n_batch=config["n_ctx"],
        n_ubatch=config["n_ctx"],
        pooling_type=POOLING.get(config["pooling"] or "", llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED),
    )


class Embedder(Protocol):
    """What the embedding loop asks of a model (llama.cpp here, a fake in the fast tests)."""

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...


class LlamaEmbedder:
    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._tokenizer = Tokenizer(llm)

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        return embed(self._llm, inputs, self._tokenizer)

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._llm.detokenize(tokens, special=True).decode("utf-8", errors="replace"))


def serve_embeddings(channel: Channel, model: Embedder, on_exit: Callable[[], None] = lambda: os._exit(0)) -> None:
    """Embedding models answer one embedding at a time, in order, until the parent goes away."""
    while True:
        try:
            message = channel.recv()
        except (EOFError, OSError):
            return on_exit()
        if isinstance(message, Shutdown):
            return on_exit()
        if not isinstance(message, Embed | Call):
            continue
        try:
            if isinstance(message, Embed):
                value: Any = model.embed(message.inputs)
            elif message.op == "tokenize":
                value = model.tokenize(str(message.argument))
            else:
                value = model.detokenize(list(message.argument))
            channel.send(Result(message.request_id, value))
        except GatewayError as exc:
            channel.send(Failed(message.request_id, exc.to_wire()))
        except (BrokenPipeError, EOFError):
            return on_exit()
        except Exception as exc:
            error = invalid_request(f"{type(exc).__name__}: {exc}", "tokens")
            channel.send(
                Failed(message.request_id, (error if isinstance(message, Call) else internal_error(str(exc))).to_wire())
            )
