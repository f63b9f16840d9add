"""model.mmproj: start-up and `gateway check` validate the projector, count its bytes, and the
model's card says it reads images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.errors import ConfigError
from gateway.memory.facts import inspect_models
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.ggufgen import write_tiny_gguf, write_tiny_projector


def _doc(make_config: Any, mmproj: str) -> dict[str, Any]:
    return make_config({"seer": {"model": {"mmproj": mmproj}}, "plain": {}})


def test_a_projector_is_resolved_checked_and_counted(make_config: Any, tmp_path: Path) -> None:
    projector = write_tiny_projector(tmp_path / "seer.mmproj.gguf", 64)  # the tiny models are 64 wide
    settings = parse_settings(_doc(make_config, "seer.mmproj.gguf"), tmp_path)
    assert settings.models["seer"].model.mmproj == projector.resolve()
    facts = inspect_models(settings)
    seer, plain = facts["seer"], facts["plain"]
    assert seer.projector is not None and plain.projector is None
    assert seer.estimate.weights - plain.estimate.weights == seer.projector.tensor_bytes > 0


def test_a_missing_projector_names_the_model(make_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.seer\.model\.mmproj: file not found: .*nowhere\.gguf"):
        parse_settings(_doc(make_config, "nowhere.gguf"), tmp_path)


def test_a_text_model_is_not_a_projector(make_config: Any, tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "text.gguf")
    settings = parse_settings(_doc(make_config, "text.gguf"), tmp_path)
    with pytest.raises(ConfigError, match=r"models\.seer\.model\.mmproj: .*not a projector: .*'llama'"):
        inspect_models(settings)


def test_a_projector_made_for_another_width_names_both(make_config: Any, tmp_path: Path) -> None:
    write_tiny_projector(tmp_path / "wide.gguf", 576)
    settings = parse_settings(_doc(make_config, "wide.gguf"), tmp_path)
    with pytest.raises(ConfigError, match=r"models\.seer\.model\.mmproj: .*width 576 .*embedding width 64"):
        inspect_models(settings)


def test_an_unreadable_projector_is_a_configuration_error(make_config: Any, tmp_path: Path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    settings = parse_settings(_doc(make_config, "junk.gguf"), tmp_path)
    with pytest.raises(ConfigError, match=r"models\.seer\.model\.mmproj: cannot read GGUF .*junk\.gguf"):
        inspect_models(settings)


def test_vision_is_a_capability_only_with_a_projector(make_config: Any, tmp_path: Path) -> None:
    write_tiny_projector(tmp_path / "p.gguf", 64)
    settings = parse_settings(_doc(make_config, "p.gguf"), tmp_path)
    with TestClient(create_app(settings, spawn=FakeWorkers({}).spawn, budget=2**40)) as client:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards["seer"]["capabilities"] == ["chat", "tools", "vision"]
    assert cards["plain"]["capabilities"] == ["chat", "tools"]
