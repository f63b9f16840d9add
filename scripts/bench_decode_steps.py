"""llama.cpp alone: CPU time of one decode step at 1, 2, 3, 4 and 8 sequences, on one thread.

On one thread the CPU time of `llama_decode` is its compute, which other load on a shared machine does
not change (wall clock would), so this shows what a batch size itself costs: docs/performance.md's
explanation of the 2-stream dip. Usage: .venv/bin/python scripts/bench_decode_steps.py [MODEL.gguf ...]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import CHATML_PROMPT, N_CTX, SMOLLM, SMOLLM_Q8

from gateway.engine.worker.backend import without_amx

SIZES = [1, 2, 3, 4, 8]
STEPS = 48
RUNS = 3


def step_cpu_ms(model: object, sequences: int) -> float:
    """Median thread CPU time of a decode step of `sequences` tokens, one per sequence."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = N_CTX * max(SIZES)
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = 16
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = 1
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO  # as the worker runs it by default
    context = _internals.LlamaContext(model=model, params=params, verbose=False)
    prompt = model.tokenize(CHATML_PROMPT.encode(), True, True)  # type: ignore[attr-defined]
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    rows = 0
    for seq in range(sequences):
        for pos, token in enumerate(prompt):
            batch.token[rows], batch.pos[rows], batch.n_seq_id[rows] = token, pos, 1
            batch.seq_id[rows][0], batch.logits[rows] = seq, pos == len(prompt) - 1
            rows += 1
    batch.n_tokens = rows
    llama_cpp.llama_decode(context.ctx, batch)
    times = []
    for step in range(STEPS):
        for s in range(sequences):
            batch.token[s], batch.pos[s], batch.n_seq_id[s] = 1000 + s, len(prompt) + step, 1
            batch.seq_id[s][0], batch.logits[s] = s, True
        batch.n_tokens = sequences
        started = time.thread_time_ns()
        llama_cpp.llama_decode(context.ctx, batch)
        times.append(time.thread_time_ns() - started)
    llama_cpp.llama_batch_free(batch)
    context.close()
    return statistics.median(times) / 1e6


def main() -> None:
    import llama_cpp
    from llama_cpp import _internals, _logger

    _logger.set_verbose(False)
    paths = [Path(p) for p in sys.argv[1:]] or [SMOLLM, SMOLLM_Q8]
    for path in paths:
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = not without_amx(llama_cpp)  # as the worker loads it
        model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        best = {n: min(step_cpu_ms(model, n) for _ in range(RUNS)) for n in SIZES}
        print(f"{path.name} (one thread, CPU ms per decode step, best of {RUNS} medians of {STEPS} steps)")
        for n, ms in best.items():
            print(f"  {n} sequences: {ms:6.2f} ms/step, {ms / n:5.2f} ms/token, {ms / best[1]:4.2f}x one sequence")
        model.close()


if __name__ == "__main__":
    main()
