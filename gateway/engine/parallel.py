"""Several choices of one prompt decoded together (n > 1): one batch per step, one sequence each.

A second llama.cpp context on the same weights holds the sequences (the main context, and its prompt
cache, stay as they are): made on the first n > 1 request, with a unified KV cache so the prompt is
evaluated once and shared by every sequence. Runs in the worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

MAX_SEQUENCES = 16  # protocol.MAX_CHOICES


class Output(Protocol):
    def token(self, token: int, ctx: Any = None, idx: int = -1) -> bool: ...


class Sampler(Protocol):
    def sample(self, context: Any, idx: int) -> int: ...


class Parallel:
    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._context: Any = None
        self._batch: Any = None

    def _ready(self) -> tuple[Any, Any]:
        if self._context is None:
            from llama_cpp import _internals

            llm = self._llm
            params = type(llm.context_params).from_buffer_copy(llm.context_params)
            params.n_seq_max = MAX_SEQUENCES
            params.kv_unified = True
            self._context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
            self._batch = _internals.LlamaBatch(
                n_tokens=max(llm.n_batch, MAX_SEQUENCES), embd=0, n_seq_max=MAX_SEQUENCES, verbose=False
            )
        return self._context, self._batch

    def run(
        self,
        prompt: list[int],
        outputs: Sequence[Output],
        samplers: Sequence[Sampler],
        cancelled: Callable[[], bool],
    ) -> None:
        """Decode len(outputs) choices; choice i samples with samplers[i]."""
        llm = self._llm
        context, batch = self._ready()
        context.kv_cache_clear()
        for start in range(0, len(prompt), llm.n_batch):
            batch.set_batch(prompt[start : start + llm.n_batch], n_past=start, logits_all=False)
            context.decode(batch)
        for sequence in range(1, len(outputs)):
            context.kv_cache_seq_cp(0, sequence, 0, len(prompt))
        # Every choice starts from the prompt's last logits.
        last = {s: samplers[s].sample(context, -1) for s in range(len(outputs))}
        active = [s for s in range(len(outputs)) if not outputs[s].token(last[s], context.ctx, -1)]
        position = len(prompt)
        while active and not cancelled():
            raw = batch.batch
            raw.n_tokens = len(active)
            for row, sequence in enumerate(active):
                raw.token[row] = last[sequence]
                raw.pos[row] = position
                raw.seq_id[row][0] = sequence
                raw.n_seq_id[row] = 1
                raw.logits[row] = True
            context.decode(batch)
            position += 1
            still = []
            for row, sequence in enumerate(active):
                last[sequence] = samplers[sequence].sample(context, row)
                if not outputs[sequence].token(last[sequence], context.ctx, row):
                    still.append(sequence)
            active = still
        context.kv_cache_clear()
