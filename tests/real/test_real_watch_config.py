"""`GATEWAY_WATCH_CONFIG` on the real server: an edited models.yaml is applied without a restart (what a
Kubernetes ConfigMap update or a compose bind mount relies on)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import yaml

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, SMOLLM_Q8, wait_for

pytestmark = pytest.mark.real


def ids(base_url: str) -> set[str]:
    return {card["id"] for card in httpx.get(f"{base_url}/v1/models", timeout=CLIENT_TIMEOUT).json()["data"]}


def test_edited_config_is_applied_without_restart(fresh_server: Any) -> None:
    config = {"gateway": {"spare_workers": 0}, "models": {"smollm2": model(SMOLLM)}}
    server = fresh_server(config, {"GATEWAY_WATCH_CONFIG": "0.2"})
    pid = server.process.pid
    assert ids(server.base_url) == {"smollm2"}
    config["models"]["smollm2-q8"] = model(SMOLLM_Q8)
    replacement = server.config_path.with_suffix(".new")
    replacement.write_text(yaml.safe_dump(config))
    replacement.replace(server.config_path)  # as editors and the kubelet do: a new file in its place
    # A generous deadline: the watcher polls every 0.2 s, but a loaded machine can delay it a lot.
    assert wait_for(lambda: ids(server.base_url) == {"smollm2", "smollm2-q8"}), server.log()
    assert server.process.pid == pid and server.process.poll() is None
    assert "configuration reloaded" in server.log()
