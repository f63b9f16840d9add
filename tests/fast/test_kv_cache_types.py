"""KV cache types (`model.cache_type_k` / `cache_type_v`: f16, q8_0, q4_0): validated against the
attention path, counted in the estimate, the pools and `gateway check`, and handed to llama.cpp."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
import yaml

from gateway.cli import main as cli
from gateway.config import ModelEntry, load_settings, parse_settings
from gateway.config.units import format_bytes
from gateway.engine.process.launch import worker_config
from gateway.engine.worker.backend import cache_type_arguments
from gateway.errors import ConfigError
from gateway.memory.estimate import estimate, kv_bytes_per_layer
from gateway.memory.facts import inspect_models
from gateway.memory.footprint import footprint
from gateway.memory.options import model_options, pools_for
from gateway.memory.planner import Placement
from gateway.memory.pools import HOST, Vector
from tests.ggufgen import write_tiny_gguf

GiB = 2**30
# A model shaped like SmolLM2's attention: heads of 64 values, 2 KV heads, 3 layers.
LAYERS, HEADS_KV, HEAD = 3, 2, 64
# One token, one layer, K or V: 128 values. f16: 2 bytes each; q8_0: 4 blocks of 34 bytes; q4_0: 4 of 18.
ROW = {"f16": 256, "q8_0": 136, "q4_0": 72}


def gguf(tmp_path: Path, head: int = HEAD) -> Path:
    return write_tiny_gguf(tmp_path / f"h{head}.gguf", layers=LAYERS, embedding=4 * head, heads=4, heads_kv=HEADS_KV)


def entry(path: Path, **model: Any) -> ModelEntry:
    return ModelEntry.model_validate({"model": {"path": str(path), "n_ctx": 1024, **model}})


def test_cache_types_default_to_f16_and_take_llama_cpps_names(tmp_path: Path) -> None:
    plain = entry(gguf(tmp_path))
    assert (plain.model.cache_type_k, plain.model.cache_type_v) == ("f16", "f16")
    for k in ("f16", "q8_0", "q4_0"):
        for v in ("f16", "q8_0", "q4_0"):
            model = entry(gguf(tmp_path), cache_type_k=k, cache_type_v=v).model
            assert (model.cache_type_k, model.cache_type_v) == (k, v)
    doc = {"models": {"m": {"model": {"path": str(gguf(tmp_path)), "cache_type_k": "q5_1"}}}}
    with pytest.raises(ConfigError, match=r"models\.m\.model\.cache_type_k: .*'f16', 'q8_0' or 'q4_0'"):
        parse_settings(doc, tmp_path)


def test_a_quantized_v_cache_without_flash_attention_is_refused_naming_the_model(tmp_path: Path) -> None:
    """llama.cpp refuses such a context ("quantized V cache requires flash_attn to be enabled"), so the
    configuration does, before anything loads; a quantized K needs nothing."""
    path = str(gguf(tmp_path))
    doc = {"models": {"chat": {"model": {"path": path, "cache_type_v": "q4_0", "flash_attn": "off"}}}}
    with pytest.raises(ConfigError, match=r"models\.chat\.model: .*cache_type_v q4_0 needs flash attention"):
        parse_settings(doc, tmp_path)
    for flash in ("auto", "on"):
        parse_settings(
            {"models": {"chat": {"model": {"path": path, "cache_type_v": "q8_0", "flash_attn": flash}}}}, tmp_path
        )
    parse_settings(
        {"models": {"chat": {"model": {"path": path, "cache_type_k": "q8_0", "flash_attn": "off"}}}}, tmp_path
    )


def test_an_embedding_worker_runs_flash_attention_for_a_quantized_v_cache(tmp_path: Path) -> None:
    """As llama.cpp's auto does: an embedding worker (whose `Llama` has no auto) turns it on for a
    quantized V, and stays off otherwise, as before."""
    path = gguf(tmp_path)
    embedding = {"embedding": True, "model": {"path": str(path), "pooling": "mean"}}
    assert ModelEntry.model_validate(embedding).flash_attention == "off"
    quantized = {**embedding, "model": {**embedding["model"], "cache_type_v": "q8_0"}}  # type: ignore[dict-item]
    assert ModelEntry.model_validate(quantized).flash_attention == "on"
    assert ModelEntry.model_validate({**quantized, "embedding": False}).flash_attention == "auto"


def test_the_estimate_counts_the_smaller_cache(tmp_path: Path) -> None:
    info = inspect_models(load_settings(write_models(tmp_path, {"m": {}})))["m"].info
    assert info.kv_values_per_layer() == [(HEADS_KV * HEAD, HEADS_KV * HEAD)] * LAYERS
    f16 = estimate(info, 1000, parallel=2)
    assert f16.kv_cache == 2000 * LAYERS * 2 * ROW["f16"] == 2000 * info.kv_bytes_per_token()
    for k in ROW:
        for v in ROW:
            est = estimate(info, 1000, parallel=2, cache=(k, v))  # type: ignore[arg-type]
            assert kv_bytes_per_layer(info, (k, v)) == [ROW[k] + ROW[v]] * LAYERS  # type: ignore[arg-type]
            assert est.kv_cache == 2000 * LAYERS * (ROW[k] + ROW[v])
            assert (est.weights, est.overhead) == (f16.weights, f16.overhead)
    q8 = estimate(info, 1000, cache=("q8_0", "q8_0")).kv_cache
    q4 = estimate(info, 1000, cache=("q4_0", "q4_0")).kv_cache
    assert q8 * 64 == f16.kv_cache // 2 * 34 and q4 * 64 == f16.kv_cache // 2 * 18  # 34/64 and 18/64 of f16


def write_models(tmp_path: Path, models: dict[str, dict[str, Any]]) -> Path:
    path = gguf(tmp_path)
    entries = {name: {"model": {"path": path.name, "n_ctx": 1024, **model}} for name, model in models.items()}
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"memory_budget": "1GiB"}, "models": entries}))
    return config


def test_the_pools_count_the_smaller_cache(tmp_path: Path) -> None:
    types = {"f16": {}, "q8": {"cache_type_k": "q8_0", "cache_type_v": "q8_0"}, "q4": {"cache_type_v": "q4_0"}}
    settings = load_settings(write_models(tmp_path, types))
    facts = inspect_models(settings)
    pools = pools_for(settings, (), 64 * GiB)
    need = {m: model_options(settings.models[m], facts[m], settings, pools, Vector())[0].need for m in types}
    assert all(need[m].as_dict() == {HOST: facts[m].estimate.total} for m in types)
    assert need["f16"][HOST] - need["q8"][HOST] == 1024 * LAYERS * 2 * (ROW["f16"] - ROW["q8_0"])
    assert need["f16"][HOST] - need["q4"][HOST] == 1024 * LAYERS * (ROW["f16"] - ROW["q4_0"])
    # On a GPU the cache sits with its layers: all of it on cuda0 when every layer is offloaded.
    info = facts["q8"].info
    placed = footprint(info, 1024, Placement(("cuda0",), None, -1), cache=("q8_0", "q8_0"))
    assert placed.kv_cache.as_dict() == {"cuda0": 1024 * LAYERS * 2 * ROW["q8_0"]}


def test_a_quantized_cache_needs_heads_its_blocks_divide(tmp_path: Path) -> None:
    """llama.cpp refuses a quantized cache whose 32-value blocks do not divide the head size."""
    path = write_tiny_gguf(tmp_path / "h16.gguf", layers=2, embedding=64, heads=4, heads_kv=2)  # heads of 16
    doc = {"models": {"m": {"model": {"path": str(path), "cache_type_k": "q8_0"}}}}
    with pytest.raises(ConfigError, match=r"models\.m\.model\.cache_type_k: q8_0 stores blocks of 32 .* head size 16"):
        inspect_models(parse_settings(doc, tmp_path))
    inspect_models(parse_settings({"models": {"m": {"model": {"path": str(path)}}}}, tmp_path))


def test_check_prints_each_models_cache_and_its_smaller_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("gateway.engine.worker.load.backend_info", lambda: {"backend": "CPU", "gpu_offload": False})
    monkeypatch.setattr("gateway.cli.check.read_devices", lambda: [])
    config = write_models(tmp_path, {"plain": {}, "small": {"cache_type_k": "q4_0", "cache_type_v": "q4_0"}})
    assert cli.main(["check", "--config", str(config)]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines() if "cache K" in line}
    f16, q4 = 1024 * LAYERS * 2 * ROW["f16"], 1024 * LAYERS * 2 * ROW["q4_0"]
    assert f"+ KV {format_bytes(f16)} for n_ctx x parallel (cache K f16, V f16)" in lines["plain"]
    assert f"+ KV {format_bytes(q4)} for n_ctx x parallel (cache K q4_0, V q4_0)" in lines["small"]


def test_a_quantized_v_without_flash_attention_fails_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_models(tmp_path, {"chat": {"cache_type_v": "q8_0", "flash_attn": "off"}})
    assert cli.main(["check", "--config", str(config)]) == 2
    assert "models.chat.model: Value error, cache_type_v q8_0 needs flash attention" in capsys.readouterr().err


def test_the_cache_types_reach_llama_cpps_context_params(tmp_path: Path) -> None:
    """The worker is told the types, turns them into ggml types llama.cpp's context params take (the
    generation worker) and llama-cpp-python's `Llama` takes as keywords (the embedding worker)."""
    config = worker_config(entry(gguf(tmp_path), cache_type_k="q8_0", cache_type_v="q4_0"))
    assert (config["cache_type_k"], config["cache_type_v"]) == ("q8_0", "q4_0")
    arguments = cache_type_arguments(llama_cpp, config)
    assert arguments == {"type_k": llama_cpp.GGML_TYPE_Q8_0, "type_v": llama_cpp.GGML_TYPE_Q4_0}
    assert cache_type_arguments(llama_cpp, worker_config(entry(gguf(tmp_path)))) == {
        "type_k": llama_cpp.GGML_TYPE_F16,
        "type_v": llama_cpp.GGML_TYPE_F16,
    }
    params = llama_cpp.llama_context_default_params()
    for name, value in arguments.items():
        setattr(params, name, value)
    assert (params.type_k, params.type_v) == (8, 2)  # ggml.h: GGML_TYPE_Q8_0 = 8, GGML_TYPE_Q4_0 = 2
    accepted = inspect.signature(llama_cpp.Llama.__init__).parameters
    assert {"type_k", "type_v", "flash_attn"} <= set(accepted)
