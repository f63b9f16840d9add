"""A draft model for speculative decoding (`model.speculative.draft`), loaded in the worker beside
the target: its own llama.cpp context, one sequence per target sequence id, greedy guesses.

Its vocabulary must be the target's, id for id: the gateway compares the GGUF headers when it reads
its configuration, and `check_vocabulary` compares every token's text once both are loaded (a load
fails, naming the first token that differs). Its cells mirror each drafting sequence's tokens: a
proposal evaluates only what the sequence added since the last one (kept cells are reused, the
rest removed), so a long prompt is evaluated once per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.engine.prefixstore.store import common_prefix
from gateway.engine.worker.backend import cache_type_arguments, flash_attn_type, without_amx


class VocabularyMismatch(ValueError):
    """The draft model's tokens are not the target's."""


def check_vocabulary(lib: Any, target: Any, draft: Any) -> None:
    """Raise unless `draft` (a llama_vocab pointer) has `target`'s tokens, id for id, and its specials."""
    n_target, n_draft = lib.llama_vocab_n_tokens(target), lib.llama_vocab_n_tokens(draft)
    if n_target != n_draft:
        raise VocabularyMismatch(f"the draft model has {n_draft} tokens, the model {n_target}")
    for name in ("bos", "eos"):
        ours, theirs = getattr(lib, f"llama_vocab_{name}")(target), getattr(lib, f"llama_vocab_{name}")(draft)
        if ours != theirs:
            raise VocabularyMismatch(f"the draft model's {name.upper()} token is {theirs}, the model's {ours}")
    for token in range(n_target):
        if lib.llama_vocab_get_text(target, token) != lib.llama_vocab_get_text(draft, token):
            raise VocabularyMismatch(f"token {token} differs between the draft model and the model")


class DraftModel:
    """Greedy drafts from a second model. `config` is the worker's; `draft` its speculative.draft."""

    def __init__(self, config: dict[str, Any], draft: dict[str, Any], target: Any) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.max_tokens = int(draft["max_tokens"])
        params = llama_cpp.llama_model_default_params()
        layers = int(draft["n_gpu_layers"])
        params.n_gpu_layers = 0x7FFFFFFF if layers < 0 else layers
        params.use_mmap = config["use_mmap"]
        if without_amx(llama_cpp):
            params.use_extra_bufts = False
        self._model = _internals.LlamaModel(path_model=draft["path"], params=params, verbose=bool(config["verbose"]))
        check_vocabulary(llama_cpp, target.model.vocab, self._model.vocab)
        context = llama_cpp.llama_context_default_params()
        context.n_ctx = target.kv_cells  # as many cells as the target's pool: it mirrors its sequences
        context.n_batch = context.n_ubatch = self._n_batch = target.n_batch
        context.n_seq_max = target.max_sequences
        context.kv_unified = True
        context.no_perf = True
        context.flash_attn_type = flash_attn_type(llama_cpp, config)
        for name, ggml_type in cache_type_arguments(llama_cpp, {}).items():
            setattr(context, name, ggml_type)  # f16: what the estimate counts for the draft
        if config["n_threads"]:
            context.n_threads = context.n_threads_batch = config["n_threads"]
        self._context = _internals.LlamaContext(model=self._model, params=context, verbose=bool(config["verbose"]))
        self._ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._model.vocab))
        self._batch = _internals.LlamaBatch(n_tokens=self._n_batch, embd=0, n_seq_max=1, verbose=False)
        self._held: dict[int, list[int]] = {}  # sequence -> the tokens its cells hold

    def propose(self, seq: int, tokens: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` greedy tokens to follow `tokens` (the sequence's prompt, output and pending)."""
        held = self._held.get(seq, [])
        keep = min(common_prefix(held, tokens), len(tokens) - 1)  # the last is evaluated again for its logits
        self._lib.llama_memory_seq_rm(self._memory, seq, keep, -1)
        self._held[seq] = list(tokens[:keep])
        if not self._evaluate(seq, tokens, keep):
            return []
        draft: list[int] = []
        while True:
            draft.append(self._argmax())
            if len(draft) >= limit or not self._evaluate(seq, [*tokens, *draft], len(tokens) + len(draft) - 1):
                return draft

    def forget(self, keep: set[int]) -> None:
        for seq in [s for s in self._held if s not in keep]:
            self._lib.llama_memory_seq_rm(self._memory, seq, 0, -1)
            del self._held[seq]

    def _evaluate(self, seq: int, tokens: Sequence[int], start: int) -> bool:
        """Decode tokens[start:] into `seq`'s cells (logits for the last); False if llama.cpp refused."""
        raw = self._batch.batch
        for begin in range(start, len(tokens), self._n_batch):
            end = min(begin + self._n_batch, len(tokens))
            for i, pos in enumerate(range(begin, end)):
                raw.token[i], raw.pos[i], raw.n_seq_id[i] = tokens[pos], pos, 1
                raw.seq_id[i][0], raw.logits[i] = seq, pos == len(tokens) - 1
            raw.n_tokens = end - begin
            if self._lib.llama_decode(self._ctx, raw) != 0:
                self.forget(set())  # its cells are in an unknown state: start over next time
                return False
        self._held[seq] = list(tokens)
        return True

    def _argmax(self) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, -1), shape=(self._n_vocab,))
        return int(logits.argmax())
