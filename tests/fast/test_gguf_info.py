from __future__ import annotations

from pathlib import Path

import pytest

from gateway.gguf_info import GGUFFormatError, read_gguf_info
from gateway.memory import WORKER_BASELINE_BYTES, estimate
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
    assert est.at_load == est.weights + est.kv_cache + est.overhead
    assert est.total == est.at_load + est.batch_context


def test_estimate_counts_the_second_context_of_n_choices(tmp_path: Path) -> None:
    """The first n > 1 request makes a second context with its own KV cache of n_ctx cells
    (engine/parallel.py): the estimate counts it from the start, or a budget admits a model that
    later outgrows it. Embedding models never make one."""
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf"))
    est = estimate(info, n_ctx=1000)
    assert est.batch_context >= est.kv_cache > 0
    assert est.total >= est.weights + 2 * est.kv_cache + est.overhead
    assert estimate(info, n_ctx=1000, embedding=True).batch_context == 0


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
