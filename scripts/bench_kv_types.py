"""llama.cpp alone: what each KV cache type (f16, q8_0, q4_0 for K and V) costs in memory and in decode
time, one sequence on one thread, with the cache filled to several depths.

Thread CPU time of `llama_decode` is its compute, which other load on a shared machine does not change
(wall clock would). Memory is llama.cpp's KV buffer at n_ctx 8192, which the gateway's estimate counts
exactly (tests/real/test_real_kv_cache_types.py); docs/performance.md quotes a run.
The last row is f16 with flash attention off, against the first (f16, llama.cpp's choice: on for the CPU).
Usage: .venv/bin/python scripts/bench_kv_types.py [MODEL.gguf]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import SMOLLM

from gateway.engine.worker.backend import without_amx
from gateway.gguf.header import read_gguf_info
from gateway.memory.estimate import estimate

TYPES = ("f16", "q8_0", "q4_0")
N_CTX = 8192
DEPTHS = (256, 1024, 4000)  # tokens already in the cache when the timed steps run
STEPS = 16
CHUNK = 512


def step_cpu_ms(model: object, cache_type: str, flash_attn: bool = True) -> dict[int, float]:
    """Median thread CPU time of a one-token decode step at each depth of the cache (`flash_attn`:
    llama.cpp's choice, as the worker runs it by default, or off)."""
    import llama_cpp
    from llama_cpp import _internals

    from gateway.engine.worker.backend import cache_type_arguments

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = N_CTX
    params.n_batch = params.n_ubatch = CHUNK
    params.n_threads = 1  # the timed one-token steps; the cache is filled on two
    params.n_threads_batch = 2
    auto, off = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.flash_attn_type = auto if flash_attn else off
    types = {"cache_type_k": cache_type, "cache_type_v": cache_type}
    for name, value in cache_type_arguments(llama_cpp, types).items():
        setattr(params, name, value)
    context = _internals.LlamaContext(model=model, params=params, verbose=False)
    batch = llama_cpp.llama_batch_init(CHUNK, 0, 1)
    filled, result = 0, {}
    for depth in DEPTHS:
        while filled < depth:  # fill the cache with plain tokens, a batch at a time
            rows = min(CHUNK, depth - filled)
            for i in range(rows):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = 1000 + (filled + i) % 500, filled + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == rows - 1
            batch.n_tokens = rows
            llama_cpp.llama_decode(context.ctx, batch)
            filled += rows
        times = []
        for step in range(STEPS):
            batch.token[0], batch.pos[0], batch.n_seq_id[0] = 1000 + step, filled + step, 1
            batch.seq_id[0][0], batch.logits[0] = 0, True
            batch.n_tokens = 1
            started = time.thread_time_ns()
            llama_cpp.llama_decode(context.ctx, batch)
            times.append(time.thread_time_ns() - started)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(context.ctx), 0, filled, -1)  # drop the steps
        result[depth] = statistics.median(times) / 1e6
    llama_cpp.llama_batch_free(batch)
    context.close()
    return result


def main() -> None:
    import llama_cpp
    from llama_cpp import _internals, _logger

    _logger.set_verbose(False)
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else SMOLLM
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = not without_amx(llama_cpp)  # as the worker loads it
    model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    info = read_gguf_info(path)
    print(f"{path.name}: KV cache at n_ctx {N_CTX}; one thread, CPU ms per one-token decode step at each depth")
    base: dict[int, float] = {}
    for cache_type in TYPES:
        kv = estimate(info, N_CTX, cache=(cache_type, cache_type)).kv_cache  # type: ignore[arg-type]
        ms = step_cpu_ms(model, cache_type)
        base = base or ms
        steps = ", ".join(f"{d}: {ms[d]:5.2f} ms ({ms[d] / base[d]:4.2f}x)" for d in DEPTHS)
        print(f"  {cache_type:5} KV {kv / 2**20:6.1f} MiB  {steps}")
    # f16 with flash attention off (a quantized V needs it on): the other attention path's cost.
    ms = step_cpu_ms(model, "f16", flash_attn=False)
    steps = ", ".join(f"{d}: {ms[d]:5.2f} ms ({ms[d] / base[d]:4.2f}x)" for d in DEPTHS)
    print(f"  f16, flash attention off        {steps}")
    model.close()


if __name__ == "__main__":
    main()
