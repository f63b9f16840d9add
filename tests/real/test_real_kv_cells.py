"""The llama.cpp adapter on a real model: how a sequence's logits depend on where its cells lie in
the shared KV pool (continuous batching puts sequences side by side and frees cells all the time).

Flash attention (llama.cpp's "auto", on for CPU) gives a sequence exactly the logits it gets alone
whatever other sequences hold cells below it, and however its prompt was split into batches; the
plain attention path does not (0.71 max logit error on SmolLM2 with one other sequence below). A
token whose cell lands in a freed cell below its own earlier cells moves its logits by about as
much as switching attention paths does (0.68 vs 0.64): llama.cpp's arithmetic, not a mask error
(one stray cell of another sequence moves them by 1.37).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gateway.engine.base import GenerationParams
from gateway.engine.worker.backend import Backend, Row
from gateway.engine.worker.main import load
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


class Pool:
    """One backend and the two prompts every case decodes."""

    def __init__(self, flash_attn: str) -> None:
        self.backend: Backend
        self.backend, render = load({**CONFIG, "flash_attn": flash_attn})

        def prompt(text: str) -> list[int]:
            params = GenerationParams(
                messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0, top_p=1, top_k=40,
                min_p=0.05, repeat_penalty=1, presence_penalty=0, frequency_penalty=0, stop=[], seed=1,
            )  # fmt: skip
            return render(params)[0]

        self.other, self.hello = prompt("Count from 1 to 50, separated by commas."), prompt("Hello! Who are you?")

    def decode(self, seq: int, tokens: list[int], start: int) -> np.ndarray:
        rows = [Row(t, start + i, seq, i == len(tokens) - 1) for i, t in enumerate(tokens)]
        assert self.backend.decode(rows) == 0
        return np.array(self.backend.logits(len(rows) - 1))

    def clear(self, *seqs: int) -> None:
        for seq in seqs:
            self.backend.seq_rm(seq, 0, -1)


def layouts(pool: Pool) -> dict[str, np.ndarray]:
    """The last prompt token's logits, `hello` decoded with its cells laid out four ways."""
    hello, result = pool.hello, {}
    result["alone"] = pool.decode(0, hello, 0)
    pool.clear(0)
    pool.decode(1, pool.other, 0)
    result["above another sequence"] = pool.decode(2, hello, 0)
    pool.clear(1, 2)
    pool.decode(3, hello[:-1], 0)
    result["prompt in two batches"] = pool.decode(3, hello[-1:], len(hello) - 1)
    pool.clear(3)
    pool.decode(4, pool.other, 0)
    pool.decode(5, hello[:-1], 0)
    pool.clear(4)  # a hole below the prompt's cells
    result["last cell in a hole below"] = pool.decode(5, hello[-1:], len(hello) - 1)
    pool.clear(5)
    return result


@pytest.fixture(scope="module")
def measured() -> Callable[[str], dict[str, np.ndarray]]:
    cache: dict[str, dict[str, np.ndarray]] = {}

    def get(flash_attn: str) -> dict[str, np.ndarray]:
        if flash_attn not in cache:
            cache[flash_attn] = layouts(Pool(flash_attn))
        return cache[flash_attn]

    return get


def error(a: Any, b: Any) -> float:
    return float(np.abs(a - b).max())


def test_flash_attention_logits_do_not_depend_on_other_sequences_or_batching(measured: Any) -> None:
    fa = measured("auto")
    assert error(fa["alone"], fa["above another sequence"]) == 0.0
    assert error(fa["alone"], fa["prompt in two batches"]) == 0.0


def test_the_plain_attention_path_depends_on_other_sequences_cells(measured: Any) -> None:
    """Why flash attention is the default: without it a neighbour's cells change a sequence's logits."""
    plain = measured("off")
    assert error(plain["alone"], plain["above another sequence"]) > 0.0


def test_a_token_in_a_freed_cell_below_moves_logits_no_more_than_arithmetic_does(measured: Any) -> None:
    fa, plain = measured("auto"), measured("off")
    arithmetic = error(fa["alone"], plain["alone"])  # the same tokens through the two attention paths
    hole = error(fa["alone"], fa["last cell in a hole below"])
    assert arithmetic > 0.0 and hole < 1.5 * arithmetic, (hole, arithmetic)
    # The leading tokens stay in order (lower down, near ties may swap, as between the two paths).
    assert list(np.argsort(-fa["last cell in a hole below"])[:3]) == list(np.argsort(-fa["alone"])[:3])
