"""`model.speculative` (n-gram and draft-model speculative decoding): validated, its draft model's
vocabulary checked against the model's from the headers, its memory in the estimate and the pools,
and handed to the worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ModelEntry, parse_settings
from gateway.engine.process.launch import worker_config
from gateway.errors import ConfigError
from gateway.memory.estimate import draft_estimate, estimate
from gateway.memory.facts import inspect_models
from gateway.memory.options import model_options, pools_for
from gateway.memory.planner import Placement
from gateway.memory.pools import HOST, Vector
from tests.ggufgen import write_tiny_gguf

GiB = 2**30


def doc(tmp_path: Path, speculative: dict[str, Any] | None, **model: Any) -> dict[str, Any]:
    path = write_tiny_gguf(tmp_path / "target.gguf", vocab=32)
    spec = {"speculative": speculative} if speculative is not None else {}
    return {"models": {"m": {"model": {"path": str(path), "n_ctx": 256, **spec, **model}}}}


def test_ngram_defaults_and_bounds(tmp_path: Path) -> None:
    entry = ModelEntry.model_validate({"model": {"path": "x.gguf", "speculative": {"ngram": {}}}})
    spec = entry.model.speculative
    assert spec is not None and spec.ngram is not None and spec.draft is None
    assert (spec.ngram.min, spec.ngram.max, spec.ngram.lookahead) == (2, 8, 16)
    assert ModelEntry.model_validate({"model": {"path": "x.gguf"}}).model.speculative is None
    with pytest.raises(ConfigError, match=r"speculative\.ngram: .*min \(5\) must not exceed max \(3\)"):
        parse_settings(doc(tmp_path, {"ngram": {"min": 5, "max": 3}}), tmp_path)
    with pytest.raises(ConfigError, match=r"models\.m\.model\.speculative\.ngram\.lookahead"):
        parse_settings(doc(tmp_path, {"ngram": {"lookahead": 0}}), tmp_path)
    with pytest.raises(ConfigError, match=r"models\.m\.model\.speculative\.ngram\.typo"):
        parse_settings(doc(tmp_path, {"ngram": {"typo": 1}}), tmp_path)


def test_the_draft_path_is_resolved_against_the_file_and_must_exist(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "draft.gguf", vocab=32)
    settings = parse_settings(doc(tmp_path, {"draft": {"path": "draft.gguf"}}), tmp_path)
    draft = settings.models["m"].model.speculative.draft  # type: ignore[union-attr]
    assert draft is not None and draft.path == (tmp_path / "draft.gguf").resolve()
    assert (draft.n_gpu_layers, draft.max_tokens) == (0, 8)
    with pytest.raises(ConfigError, match=r"models\.m\.model\.speculative\.draft\.path: file not found"):
        parse_settings(doc(tmp_path, {"draft": {"path": "missing.gguf"}}), tmp_path)


def test_a_draft_with_another_vocabulary_is_refused_naming_the_model(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "other.gguf", vocab=48)
    settings = parse_settings(doc(tmp_path, {"draft": {"path": "other.gguf"}}), tmp_path)
    problem = r"models\.m\.model\.speculative\.draft: other\.gguf: its vocabulary has 48 tokens, the model's 32"
    with pytest.raises(ConfigError, match=problem):
        inspect_models(settings)


def test_an_embedding_model_cannot_speculate(tmp_path: Path) -> None:
    data = doc(tmp_path, {"ngram": {}}, pooling="mean")
    data["models"]["m"]["embedding"] = True
    with pytest.raises(ConfigError, match=r"models\.m\.model\.speculative: an embedding model generates no tokens"):
        inspect_models(parse_settings(data, tmp_path))


def test_the_draft_models_memory_is_in_the_estimate_and_the_pools(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "draft.gguf", vocab=32, layers=3)
    data = doc(tmp_path, {"draft": {"path": "draft.gguf"}})
    data["gateway"] = {"memory_budget": "1GiB"}
    settings = parse_settings(data, tmp_path)
    plain = parse_settings(doc(tmp_path, None), tmp_path)
    facts, plain_facts = inspect_models(settings)["m"], inspect_models(plain)["m"]
    assert facts.draft is not None
    extra = draft_estimate(facts.draft, settings.models["m"])
    # Its weights, a KV pool of the target's cells, its vocabulary and compute; one worker baseline.
    assert extra.weights == facts.draft.tensor_bytes
    assert extra.kv_cache == estimate(facts.draft, 256).kv_cache > 0
    assert 0 < extra.overhead < estimate(facts.draft, 256).overhead  # the worker's baseline is the target's
    assert facts.estimate.total == plain_facts.estimate.total + extra.total
    pools = pools_for(settings, (), 64 * GiB)
    need = model_options(settings.models["m"], facts, settings, pools, Vector())[0].need
    assert need.as_dict() == {HOST: facts.estimate.total}


def test_an_offloaded_draft_is_counted_on_the_first_gpu(tmp_path: Path) -> None:
    from gateway.memory.options import draft_need

    write_tiny_gguf(tmp_path / "draft.gguf", vocab=32)
    settings = parse_settings(doc(tmp_path, {"draft": {"path": "draft.gguf", "n_gpu_layers": -1}}), tmp_path)
    facts = inspect_models(settings)["m"]
    need = draft_need(settings.models["m"], facts, Placement(("cuda0", "cuda1"), (0.5, 0.5), -1))
    assert need["cuda0"] > 0 and need["cuda1"] == 0
    host = draft_need(settings.models["m"], facts, Placement())
    assert host.as_dict() == {HOST: draft_estimate(facts.draft, settings.models["m"]).total}  # type: ignore[arg-type]


def test_the_worker_is_told_the_speculative_settings(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "draft.gguf", vocab=32)
    spec = {"ngram": {"min": 1, "max": 3, "lookahead": 8}, "draft": {"path": "draft.gguf", "max_tokens": 4}}
    settings = parse_settings(doc(tmp_path, spec), tmp_path)
    config = worker_config(settings.models["m"])
    assert config["speculative"] == {
        "ngram": {"min": 1, "max": 3, "lookahead": 8},
        "draft": {"path": str((tmp_path / "draft.gguf").resolve()), "n_gpu_layers": 0, "max_tokens": 4},
    }
    assert worker_config(parse_settings(doc(tmp_path, None), tmp_path).models["m"])["speculative"] is None


def test_check_names_the_speculative_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from gateway.cli import main as cli

    write_tiny_gguf(tmp_path / "draft.gguf", vocab=32)
    data = doc(tmp_path, {"ngram": {}, "draft": {"path": "draft.gguf"}})
    data["gateway"] = {"memory_budget": "1GiB"}
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "speculative: n-gram 2-8, up to 16; draft model draft.gguf (" in out


def test_metrics_report_drafted_accepted_and_the_rate_per_model() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.observability.collectors import ModelState, StateCollector

    states = [
        ModelState("spec", "loaded", 1, 0, 100, 100, drafted_tokens=40, accepted_tokens=30),
        ModelState("plain", "loaded", 1, 0, 100, 100),
    ]
    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: (states, 1000)))
    text = generate_latest(registry).decode()
    assert 'gateway_speculative_drafted_tokens_total{model="spec"} 40.0' in text
    assert 'gateway_speculative_accepted_tokens_total{model="spec"} 30.0' in text
    assert 'gateway_speculative_acceptance_ratio{model="spec"} 0.75' in text
    assert 'gateway_speculative_acceptance_ratio{model="plain"} 0.0' in text
