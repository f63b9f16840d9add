from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.gguf.header import GGUFFormatError, read_gguf_info
from gateway.memory.estimate import (
    ALLOCATOR_MARGIN,
    CONSTRAINT_BYTES_PER_VOCAB_TOKEN,
    WORKER_BASELINE_BYTES,
    after_load_bytes,
    entry_batch_bytes,
    estimate,
)
from gateway.memory.facts import inspect_model
from gateway.memory.footprint import footprint
from gateway.memory.planner import Placement
from gateway.memory.pools import HOST
from tests.ggufgen import tiny_tensor_bytes, write_tiny_gguf


def test_reads_header_without_loading(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf", layers=3, embedding=64, heads=4, heads_kv=2))
    assert info.architecture == "llama"
    assert info.block_count == 3
    assert info.tensor_bytes == tiny_tensor_bytes(layers=3)
    assert info.has_chat_template
    assert info.quantization == "ALL_F32"
    # 3 layers x 2 kv heads x (16 + 16) dims x 2 bytes (f16)
    assert info.kv_bytes_per_token() == 3 * 2 * 32 * 2


def test_no_template(tmp_path: Path) -> None:
    assert not read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf", chat_template=None)).has_chat_template


def test_estimate_adds_kv_and_overhead(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf"))
    est = estimate(info, n_ctx=1000)
    assert est.weights == info.tensor_bytes
    assert est.kv_cache == 1000 * info.kv_bytes_per_token()
    assert est.overhead >= WORKER_BASELINE_BYTES
    assert est.total == est.weights + est.kv_cache + est.overhead


def test_rejects_non_gguf_and_truncated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(GGUFFormatError, match="magic"):
        read_gguf_info(bad)
    good = write_tiny_gguf(tmp_path / "t.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[:200])
    with pytest.raises(GGUFFormatError):
        read_gguf_info(cut)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFFormatError):
        read_gguf_info(empty)


def test_estimate_holds_a_context_for_each_parallel_request(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf"))
    one, four = estimate(info, n_ctx=1000), estimate(info, n_ctx=1000, parallel=4)
    assert four.kv_cache == 4 * one.kv_cache and four.total - one.total == 3 * one.kv_cache


def test_an_embedding_model_counts_an_output_row_per_token_of_an_input(make_config: Any, tmp_path: Path) -> None:
    """llama.cpp keeps logits and the embedding of every token of an embedding batch (f32)."""
    doc = make_config(
        {"gen": {"model": {"n_ctx": 256}}, "emb": {"embedding": True, "model": {"n_ctx": 256, "pooling": "mean"}}}
    )
    settings = parse_settings(doc, tmp_path)
    gen, emb = (inspect_model(settings.models[m]) for m in ("gen", "emb"))
    rows = 256 * (gen.info.vocab_size + gen.info.embedding_length) * 4
    batches = entry_batch_bytes(emb.info, settings.models["emb"]) - entry_batch_bytes(gen.info, settings.models["gen"])
    assert emb.estimate.overhead - gen.estimate.overhead == rows + batches
    host = Placement()
    batch = entry_batch_bytes(emb.info, settings.models["emb"])
    assert footprint(emb.info, 256, host, output_rows=256, batch=batch).vector.as_dict() == {HOST: emb.estimate.total}


def test_a_full_batch_counts_what_it_makes_resident(make_config: Any, tmp_path: Path) -> None:
    """Activations for every token of a batch; attention scores over the KV pool without flash
    attention (embeddings run without it unless `on`); every token's logits for an embedding model."""
    doc = make_config(
        {
            "auto": {"model": {"n_ctx": 256, "n_batch": 64}},
            "plain": {"model": {"n_ctx": 256, "n_batch": 64, "flash_attn": "off"}},
            "emb": {"embedding": True, "model": {"n_ctx": 256, "pooling": "mean"}},
            "emb-flash": {"embedding": True, "model": {"n_ctx": 256, "pooling": "mean", "flash_attn": True}},
        }
    )
    settings = parse_settings(doc, tmp_path)
    facts = {m: inspect_model(settings.models[m]) for m in settings.models}
    info = facts["auto"].info
    activations = 64 * (6 * info.embedding_length + 4 * info.feed_forward_length + 2 * info.query_width) * 4
    assert entry_batch_bytes(info, settings.models["auto"]) == activations
    scores = 64 * 256 * info.head_count * 4
    assert entry_batch_bytes(info, settings.models["plain"]) == activations + int(scores * ALLOCATOR_MARGIN)
    assert facts["plain"].estimate.total - facts["auto"].estimate.total == int(scores * ALLOCATOR_MARGIN)
    logits = 256 * info.vocab_size * 4
    whole = 256 * (6 * info.embedding_length + 4 * info.feed_forward_length + 2 * info.query_width) * 4
    assert entry_batch_bytes(info, settings.models["emb-flash"]) == int(logits * ALLOCATOR_MARGIN) + whole
    scores = 256 * 256 * info.head_count * 4
    assert entry_batch_bytes(info, settings.models["emb"]) == int(max(logits, scores) * ALLOCATOR_MARGIN) + whole


def test_a_generation_model_counts_constrained_decodings_vocabulary_view(make_config: Any, tmp_path: Path) -> None:
    """Built on the first constrained request (llguidance's token tables): per vocabulary token,
    generation models only."""
    doc = make_config({"gen": {}, "emb": {"embedding": True, "model": {"pooling": "mean"}}})
    settings = parse_settings(doc, tmp_path)
    info = inspect_model(settings.models["gen"]).info
    info = dataclasses.replace(info, metadata={**info.metadata, f"{info.architecture}.vocab_size": 1000})
    gen, emb = settings.models["gen"], settings.models["emb"]
    assert after_load_bytes(info, gen) - entry_batch_bytes(info, gen) == 1000 * CONSTRAINT_BYTES_PER_VOCAB_TOKEN
    assert after_load_bytes(info, emb) == entry_batch_bytes(info, emb)
