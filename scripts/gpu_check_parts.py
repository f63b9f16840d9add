"""scripts/gpu-check's parts: the synthetic models it loads, and the fake GPUs and fake workers of its
dry run (no GPU, no llama.cpp)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 2**20
VOCAB = 32000


def write_model(path: Path, layers: int, embedding: int) -> Path:
    """A llama-architecture GGUF with f16 weights and no vocabulary."""
    import gguf
    import numpy as np

    heads, heads_kv, ff = embedding // 128, max(1, embedding // 512), int(embedding * 2.75)
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in (
        (writer.add_block_count, layers),
        (writer.add_context_length, 4096),
        (writer.add_embedding_length, embedding),
        (writer.add_feed_forward_length, ff),
        (writer.add_head_count, heads),
        (writer.add_head_count_kv, heads_kv),
        (writer.add_rope_dimension_count, 128),
        (writer.add_layer_norm_rms_eps, 1e-5),
        (writer.add_file_type, gguf.LlamaFileType.MOSTLY_F16),
        (writer.add_tokenizer_model, "none"),
        (writer.add_vocab_size, VOCAB),
    ):
        add(value)

    def f16(*shape: int) -> Any:
        return np.zeros(shape, dtype=np.float16)  # never run: only the sizes matter, and zeros are quick

    kv = 128 * heads_kv
    writer.add_tensor("token_embd.weight", f16(VOCAB, embedding))
    writer.add_tensor("output_norm.weight", np.ones(embedding, dtype=np.float32))
    writer.add_tensor("output.weight", f16(VOCAB, embedding))
    for i in range(layers):
        for name, shape in (
            ("attn_q", (embedding, embedding)),
            ("attn_k", (kv, embedding)),
            ("attn_v", (kv, embedding)),
            ("attn_output", (embedding, embedding)),
            ("ffn_gate", (ff, embedding)),
            ("ffn_up", (ff, embedding)),
            ("ffn_down", (embedding, ff)),
        ):
            writer.add_tensor(f"blk.{i}.{name}.weight", f16(*shape))
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(embedding, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dry_run_parts(n_ctx: int) -> tuple[Any, Callable[[str, Any], Any]]:
    """Fake GPUs and fake workers for a run without a GPU: each worker logs, in llama.cpp's CUDA
    format, the buffers the estimate predicts for its model, and allocates them on the fake device."""
    from dataclasses import replace

    from gateway.engine.process.handle import ProcessEngine
    from gateway.gguf.header import read_gguf_info
    from gateway.memory.footprint import footprint
    from gateway.memory.inventory import SystemInventory
    from gateway.memory.planner import Placement
    from gateway.testing.fakellama import FakeLlama, FakeScript
    from gateway.testing.fakenvml import FakeDevice, FakeGpus
    from gateway.testing.fakeworker import spawn_fake_worker

    gpus = FakeGpus([FakeDevice("GPU-dry-run", 16 * 2**30)], lag=0.5, context_bytes=500 * MiB)
    backends: list[FakeLlama] = []

    def factory(model_id: str, entry: Any) -> Any:
        part = footprint(read_gguf_info(entry.model.path), n_ctx, Placement(("cuda0",), None, -1))
        lines = (
            f"load_tensors:        CUDA0 model buffer size = {part.weights['cuda0'] / MiB:.2f} MiB",
            f"llama_kv_cache:      CUDA0 KV buffer size = {part.kv_cache['cuda0'] / MiB:.2f} MiB",
            f"sched_reserve:      CUDA0 compute buffer size = {part.compute['cuda0'] / MiB:.2f} MiB",
        )
        script = replace(FakeScript(), load_log=lines, gpus=gpus)
        engine = ProcessEngine(model_id, entry, spawn=lambda: spawn_fake_worker(script, backends, engine.worker_env))
        return engine

    return SystemInventory(nvml=gpus, sysfs=Path("/nonexistent")), factory
