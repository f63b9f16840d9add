"""The prefix store on real llama.cpp, in process: a prefix's cells saved by one context (through
worker/saved.py and a store on disk) and restored into another, freshly loaded, are the cells the
first one computed, bit for bit: the rest of the prompt gets exactly the logits, and the greedy
answer, it gets with the prefix kept in memory and the same batches. (Against evaluating the whole
prompt at once, both differ alike: llama.cpp's CPU arithmetic depends on the batch a token is in.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.engine.prefixstore.store import PrefixStore
from gateway.engine.worker.backend import Row
from gateway.engine.worker.llamacpp import LlamaCpp
from gateway.engine.worker.saved import Cached, SavedPrefixes
from tests.real.server import SMOLLM

CONFIG = {"path": str(SMOLLM), "n_ctx": 1024, "n_batch": 128, "n_threads": 2, "n_gpu_layers": 0}
SYSTEM = " ".join(f"Tool {i} reads the file at its path and returns {i} lines." for i in range(40))
TEXT = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhich tool returns 7 lines?<|im_end|>\n"
TEXT += "<|im_start|>assistant\n"


def backend() -> LlamaCpp:
    return LlamaCpp({**CONFIG, "use_mmap": True, "verbose": False}, slots=2, max_sequences=4)


def feed(llama: LlamaCpp, seq: int, tokens: list[int], start: int) -> int:
    """Decode `tokens` at `start` in batches of n_batch; the row of the last one's logits."""
    for at in range(0, len(tokens), llama.n_batch):
        part = tokens[at : at + llama.n_batch]
        rows = [Row(t, start + at + i, seq, at + i == len(tokens) - 1) for i, t in enumerate(part)]
        assert llama.decode(rows) == 0
    return (len(tokens) - 1) % llama.n_batch


def answer(llama: LlamaCpp, seq: int, row: int, pos: int) -> tuple[np.ndarray, list[int]]:
    first = np.array(llama.logits(row))
    tokens = []
    for _ in range(16):
        tokens.append(int(np.argmax(llama.logits(row))))
        assert llama.decode([Row(tokens[-1], pos, seq, True)]) == 0
        row, pos = 0, pos + 1
    return first, tokens


def saved(llama: LlamaCpp, directory: Path) -> SavedPrefixes:
    store = PrefixStore(directory, b'{"test": "one key"}', 2**30)
    return SavedPrefixes(store, llama, min_tokens=64, save_max_bytes=2**30, save_time=30.0)


def test_a_restored_prefix_is_the_prefix_kept_in_memory(tmp_path: Path) -> None:
    first = backend()
    prompt = first.tokenize(TEXT, False)
    split = len(prompt) - 12  # the prefix; the question's last tokens are the rest
    assert split > 400
    feed(first, 0, prompt[:split], 0)
    first.seq_cp(0, 1, 0, split)
    assert saved(first, tmp_path).save([Cached(1, prompt[:split])]) == (1, len(next(tmp_path.iterdir()).read_bytes()))
    kept, kept_answer = answer(first, 0, feed(first, 0, prompt[split:], split), len(prompt))

    second = backend()  # another worker, loaded later
    feed(second, 3, second.tokenize("Unrelated words first, in cells below.", False), 0)
    restoring = saved(second, tmp_path)
    stored, shared = restoring.find(prompt, 0)
    assert stored is not None and shared == split
    assert restoring.restore(2, stored) and second.seq_length(2) == split
    second.seq_cp(2, 0, 0, split)
    logits, restored_answer = answer(second, 0, feed(second, 0, prompt[split:], split), len(prompt))
    assert float(np.abs(logits - kept).max()) == 0.0
    assert restored_answer == kept_answer
    # A state llama.cpp refuses (cut short) leaves the sequence empty.
    assert not second.set_seq_state(1, second.seq_state(0)[:1000]) and second.seq_length(1) == 0
