from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import json_schema, load_settings, parse_settings
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_nested_layout_and_gateway_keys(make_config: Any, tmp_path: Path) -> None:
    doc = make_config(
        {
            "m": {
                "aliases": ["gpt-4o-mini"],
                "pinned": True,
                "ttl": "10m",
                "sampling": {"temperature": 0.2, "top_k": 10, "repeat_penalty": 1.1, "repeat_last_n": 32},
                "runtime": {"thread_count": 2, "verbose": False},
                "output": {"max_tokens": 99},
                "model": {"n_gpu_layers": -1, "chat_format": "chatml"},
            }
        },
        gateway={"memory_budget": "512MiB", "max_loaded": 2},
    )
    settings = parse_settings(doc, tmp_path)
    entry = settings.models["m"]
    assert settings.gateway.memory_budget == 512 * 2**20
    assert settings.gateway.max_loaded == 2
    assert entry.ttl == 600
    assert entry.sampling.temperature == 0.2
    assert entry.output.max_tokens == 99
    assert entry.model.chat_format == "chatml"
    assert settings.resolve("gpt-4o-mini") == "m"
    assert settings.resolve("nope") is None


def test_auto_budget_is_none(make_config: Any, tmp_path: Path) -> None:
    settings = parse_settings(make_config({"m": {}}, gateway={"memory_budget": "auto"}), tmp_path)
    assert settings.gateway.memory_budget is None


def test_flash_attention_switch_reads_yaml_booleans(make_config: Any, tmp_path: Path) -> None:
    """YAML 1.1 reads a bare on/off as a boolean: both spellings mean the same."""
    for written, meant in (("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on")):
        doc = yaml.safe_load(f"model: {{flash_attn: {written}}}")
        settings = parse_settings(make_config({"m": doc}), tmp_path)
        assert settings.models["m"].model.flash_attn == meant
    assert parse_settings(make_config({"m": {}}), tmp_path).models["m"].model.flash_attn == "auto"
    with pytest.raises(ConfigError, match=r"models\.m\.model\.flash_attn"):
        parse_settings(make_config({"m": {"model": {"flash_attn": "sometimes"}}}), tmp_path)


def test_unknown_key_names_yaml_path(make_config: Any, tmp_path: Path) -> None:
    doc = make_config({"mistral-7b": {"sampling": {"temprature": 0.7}}})
    with pytest.raises(ConfigError, match=r"models\.mistral-7b\.sampling\.temprature: unknown key"):
        parse_settings(doc, tmp_path)


def test_bad_value_names_yaml_path(make_config: Any, tmp_path: Path) -> None:
    doc = make_config({"m": {}}, gateway={"memory_budget": "lots"})
    with pytest.raises(ConfigError, match=r"gateway\.memory_budget: .*not a size"):
        parse_settings(doc, tmp_path)
    doc = make_config({"m": {"model": {"n_ctx": "big"}}})
    with pytest.raises(ConfigError, match=r"models\.m\.model\.n_ctx"):
        parse_settings(doc, tmp_path)


def test_missing_file_reported_at_load(tmp_path: Path) -> None:
    doc = {"models": {"ghost": {"model": {"path": "missing.gguf"}}}}
    with pytest.raises(ConfigError, match=r"models\.ghost\.model\.path: file not found: .*missing\.gguf"):
        parse_settings(doc, tmp_path)


def test_paths_are_relative_to_the_config_file(tmp_path: Path, tiny_gguf: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "models.yaml").write_text(yaml.safe_dump({"models": {"m": {"model": {"path": "../tiny.gguf"}}}}))
    settings = load_settings(sub / "models.yaml")
    assert settings.models["m"].model.path == tiny_gguf.resolve()


def test_alias_collisions_are_errors(make_config: Any, tmp_path: Path) -> None:
    doc = make_config({"a": {"aliases": ["b"]}, "b": {}})
    with pytest.raises(ConfigError, match="already used"):
        parse_settings(doc, tmp_path)


def test_empty_models_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="models"):
        parse_settings({"models": {}}, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(bad)


def test_repo_models_yaml_is_valid() -> None:
    settings = load_settings(REPO / "models.yaml", check_files=False)
    assert settings.models["gemma-3-270m"].model.chat_format == "gemma"
    assert len(settings.models) == 4
    assert settings.models["smollm2-135m-embed"].embedding


def test_published_schema_is_current() -> None:
    published = json.loads((REPO / "schema" / "models.schema.json").read_text())
    assert published == json_schema(), "run: gateway schema > schema/models.schema.json"


def test_schema_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["SamplingSection"]["additionalProperties"] is False


def test_embedded_default_serves_the_bundled_model(tmp_path: Path) -> None:
    from gateway.config import default_settings

    with pytest.raises(ConfigError, match=r"models\.smollm2-135m-instruct\.model\.path: file not found"):
        default_settings(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    settings = default_settings(tmp_path)
    assert list(settings.models) == ["smollm2-135m-instruct"]
    assert settings.models["smollm2-135m-instruct"].model.path == (
        tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def test_embedding_model_without_pooling_is_a_configuration_error(make_config: Any, tmp_path: Path) -> None:
    """A causal LM's GGUF names no pooling type: as an embedding entry it needs model.pooling."""
    import gguf

    from gateway.cli.main import main
    from gateway.memory.facts import inspect_models
    from tests.ggufgen import write_tiny_gguf

    doc = make_config({"chat": {}, "lm": {"embedding": True}, "ok": {"embedding": True, "model": {"pooling": "mean"}}})
    pooled = write_tiny_gguf(tmp_path / "pooled.gguf", pooling=gguf.PoolingType.CLS)
    doc["models"]["bert"] = {"embedding": True, "model": {"path": str(pooled)}}  # the GGUF names its pooling
    with pytest.raises(ConfigError) as info:
        inspect_models(parse_settings(doc, tmp_path))
    (problem,) = str(info.value).splitlines()
    assert problem.startswith("models.lm: embedding is true, but lm.gguf names no pooling type")
    assert problem.endswith("set model.pooling: mean (or cls, last)")
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check", "--config", str(path)]) == 2  # `gateway check`, and `serve` reads it the same way
    doc["models"]["lm"]["model"]["pooling"] = "mean"
    assert set(inspect_models(parse_settings(doc, tmp_path))) == {"chat", "lm", "ok", "bert"}


def test_an_unknown_chat_format_is_a_configuration_error(make_config: Any, tmp_path: Path) -> None:
    """Stopped at startup and by `gateway check`, naming the formats there are, instead of a 503 at the
    model's first load; the spellings the worker accepts ("llama-2", "mistral-instruct") pass."""
    from gateway.cli.main import main
    from gateway.memory.facts import inspect_models

    doc = make_config(
        {
            "a": {"model": {"chat_format": "llama-2"}},
            "b": {"model": {"chat_format": "mistral-instruct"}},
            "c": {"model": {"chat_format": "chatml"}},
            "typo": {"model": {"chat_format": "chatmll"}},
        }
    )
    with pytest.raises(ConfigError) as info:
        inspect_models(parse_settings(doc, tmp_path))
    (problem,) = str(info.value).splitlines()
    assert problem.startswith("models.typo.model.chat_format: unknown format 'chatmll' (known: alpaca, ")
    assert "chatml, " in problem and "gemma, " in problem
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check", "--config", str(path)]) == 2
    del doc["models"]["typo"]
    assert set(inspect_models(parse_settings(doc, tmp_path))) == {"a", "b", "c"}
