"""Writes tiny GGUF files with the `gguf` package: valid headers with random weights.

Real llama.cpp cannot run them (no tokenizer), which makes them useful for configuration, estimate
and load-failure tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np


def write_tiny_gguf(
    path: Path,
    *,
    layers: int = 2,
    embedding: int = 64,
    heads: int = 4,
    heads_kv: int = 2,
    chat_template: str | None = "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    pooling: gguf.PoolingType | None = None,
    vocab: int | None = None,
) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    if vocab is not None:
        writer.add_vocab_size(vocab)
    writer.add_block_count(layers)
    writer.add_context_length(512)
    writer.add_embedding_length(embedding)
    writer.add_feed_forward_length(embedding * 2)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads_kv)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((32, embedding), dtype=np.float32))
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_q.weight", rng.standard_normal((embedding, embedding), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_tensor_bytes(layers: int = 2, embedding: int = 64) -> int:
    return (32 * embedding + layers * embedding * embedding) * 4


def chat_and_embedding_doc(folder: Path, chat: str, embed: str, n_ctx: int = 64) -> dict[str, Any]:
    """A models.yaml document with a chat model and a mean-pooled embedding model over tiny GGUFs."""
    return {
        "models": {
            chat: {"model": {"path": str(write_tiny_gguf(folder / f"{chat}.gguf")), "n_ctx": n_ctx}},
            embed: {
                "embedding": True,
                "model": {"path": str(write_tiny_gguf(folder / f"{embed}.gguf")), "n_ctx": n_ctx, "pooling": "mean"},
            },
        }
    }


def write_tiny_projector(path: Path, embedding: int = 64, projector_type: str = "mlp") -> Path:
    """A vision projector for a model of width `embedding`, as scripts/tiny-projector writes it."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "tiny_projector.py"
    spec = importlib.util.spec_from_file_location("tiny_projector", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written: Path = module.write_tiny_projector(path, embedding, projector_type=projector_type)
    return written
