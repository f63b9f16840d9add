"""The configuration file is watched (`--watch-config`) the way a Kubernetes ConfigMap volume changes:
the kubelet writes a new directory and swaps the `..data` symlink to it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from gateway.config import load_settings
from gateway.config.watch import ConfigWatch
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a mounted ConfigMap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0

    @property
    def path(self) -> Path:
        return self.root / "models.yaml"

    def publish(self, document: dict[str, Any] | str) -> None:
        self.version += 1
        stamp = self.root / f"..2026_11_30_{self.version:04d}"
        stamp.mkdir()
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        (stamp / "models.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        if not self.path.is_symlink():
            self.path.symlink_to("..data/models.yaml")


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def model_ids(client: TestClient) -> set[str]:
    return {card["id"] for card in client.get("/v1/models").json()["data"]}


def test_configmap_swap_reloads_without_restart(make_config: Any, tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.root.mkdir()
    volume.publish(make_config({"a": {}}))
    settings = load_settings(volume.path)
    app = create_app(settings, spawn=FakeWorkers().spawn, config_path=volume.path, watch_config=0.05)
    with TestClient(app) as client:
        stream = client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
        with stream as response:
            assert response.status_code == 200
            volume.publish(make_config({"a": {}, "b": {}}))
            wait_for(lambda: model_ids(client) == {"a", "b"})
            body = "".join(response.iter_text())  # the stream begun before the reload still ends well
        assert body.rstrip().endswith("data: [DONE]") and '"error"' not in body

        # An invalid file changes nothing, and is not retried until it changes again.
        volume.publish("models: {b: {unknown: 1}}\n")
        time.sleep(0.3)
        assert model_ids(client) == {"a", "b"}
        volume.publish(make_config({"b": {}}))
        wait_for(lambda: model_ids(client) == {"b"})


@pytest.mark.anyio
async def test_watch_reloads_once_per_change(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("one")
    calls: list[str] = []

    async def reload() -> None:
        calls.append(path.read_text())

    watch = ConfigWatch(path, 1.0, reload)
    assert not await watch.check()
    path.write_text("two")
    assert await watch.check()
    assert not await watch.check()
    path.unlink()  # mid-swap or removed: nothing happens
    assert not await watch.check()
    path.write_text("two")
    assert not await watch.check()
    assert calls == ["two"]
