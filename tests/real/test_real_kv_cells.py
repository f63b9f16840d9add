"""The llama.cpp adapter on a real model: a sequence's logits do not depend on where its cells lie
in the shared KV pool (continuous batching frees cells below running sequences all the time)."""

from __future__ import annotations

import numpy as np

from gateway.engine.backend import Row
from gateway.engine.base import GenerationParams
from gateway.engine.modelload import load
from tests.real.server import SMOLLM

CONFIG = {
    "path": str(SMOLLM),
    "n_ctx": 256,
    "n_batch": 256,
    "n_gpu_layers": 0,
    "chat_format": None,
    "use_mmap": True,
    "n_threads": 2,
    "verbose": False,
    "repeat_last_n": 64,
    "embedding": False,
    "pooling": None,
    "parallel": 2,
}


def test_logits_do_not_depend_on_cell_order() -> None:
    backend, render = load(CONFIG)

    def prompt(text: str) -> list[int]:
        params = GenerationParams(
            messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0, top_p=1, top_k=40,
            min_p=0.05, repeat_penalty=1, presence_penalty=0, frequency_penalty=0, stop=[], seed=1,
        )  # fmt: skip
        return render(params)[0]

    def decode(seq: int, tokens: list[int], start: int) -> np.ndarray:
        rows = [Row(t, start + i, seq, i == len(tokens) - 1) for i, t in enumerate(tokens)]
        assert backend.decode(rows) == 0
        return np.array(backend.logits(len(rows) - 1))

    other, hello = prompt("Count from 1 to 50, separated by commas."), prompt("Hello! Who are you?")
    decode(0, other, 0)
    alone = decode(1, hello, 0)  # its cells follow sequence 0's
    backend.seq_rm(0, 0, -1)  # a hole below them
    backend.seq_cp(1, 2, 0, len(hello) - 1)
    moved = decode(2, hello[-1:], len(hello) - 1)  # the last token's cell lands in the hole
    assert float(np.abs(alone - moved).max()) < 1e-3
