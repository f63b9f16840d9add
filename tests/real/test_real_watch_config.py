"""`GATEWAY_WATCH_CONFIG` on the real server: an edited models.yaml is applied without a restart (what a
Kubernetes ConfigMap update or a compose bind mount relies on)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import yaml

from tests.real.conftest import model
from tests.real.server import SMOLLM, SMOLLM_Q8

pytestmark = pytest.mark.real


def ids(base_url: str) -> set[str]:
    return {card["id"] for card in httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"]}


def test_edited_config_is_applied_without_restart(fresh_server: Any) -> None:
    config = {"gateway": {"spare_workers": 0}, "models": {"smollm2": model(SMOLLM)}}
    server = fresh_server(config, {"GATEWAY_WATCH_CONFIG": "0.2"})
    pid = server.process.pid
    assert ids(server.base_url) == {"smollm2"}
    config["models"]["smollm2-q8"] = model(SMOLLM_Q8)
    replacement = server.config_path.with_suffix(".new")
    replacement.write_text(yaml.safe_dump(config))
    replacement.replace(server.config_path)  # as editors and the kubelet do: a new file in its place
    deadline = time.monotonic() + 30
    while ids(server.base_url) != {"smollm2", "smollm2-q8"}:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert server.process.pid == pid and server.process.poll() is None
    assert "configuration reloaded" in server.log()
