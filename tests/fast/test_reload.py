"""Reloading the configuration: the diff is applied without dropping anyone's request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.errors import GatewayError
from gateway.memory.facts import inspect_models
from gateway.scheduler import Hold, Scheduler, State
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

MSG = [{"role": "user", "content": "hi"}]


def loaded(registry: Scheduler) -> set[str]:
    return {v.model_id for v in registry.views() if v.state is State.LOADED}


async def acquire(registry: Scheduler, name: str) -> Hold:
    hold = registry.hold(name, generate=False)
    return await hold.__aenter__()


@pytest.mark.anyio
async def test_apply_diff_keeps_requests_running(make_config: Any, tmp_path: Path) -> None:
    before = parse_settings(make_config({"same": {}, "changed": {}, "gone": {}}), tmp_path)
    factory = FakeWorkers()
    registry = Scheduler(before, inspect_models(before), factory.engine, budget=2**40)
    same = await acquire(registry, "same")
    changed = await acquire(registry, "changed")
    gone = await acquire(registry, "gone")
    same_engine, changed_engine = same.engine, changed.engine

    after = parse_settings(make_config({"same": {}, "changed": {"model": {"n_ctx": 128}}, "new": {}}), tmp_path)
    summary = registry.apply(after, inspect_models(after), 2**40).summary()
    assert summary == {"added": ["new"], "removed": ["gone"], "changed": ["changed"], "unchanged": ["same"]}

    # In-flight requests keep their engines until they finish.
    assert same_engine.alive and changed_engine.alive and gone.engine.alive
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "gone")
    assert info.value.code == "model_not_found"
    # A new request for the changed model waits for the old one to drain, then loads the new entry.
    waiting = asyncio.create_task(acquire(registry, "changed"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    changed.release()
    fresh = await asyncio.wait_for(waiting, 5)
    assert fresh.engine is not changed_engine and not changed_engine.alive
    assert fresh.entry.model.n_ctx == 128
    fresh.release()
    gone.release()
    await asyncio.sleep(0.01)
    assert not gone.engine.alive
    # The unchanged model was never touched.
    assert same.engine is same_engine and same_engine.alive
    same.release()
    (await acquire(registry, "new")).release()
    assert loaded(registry) == {"same", "changed", "new"}
    assert factory.loads == {"same": 1, "changed": 2, "gone": 1, "new": 1}
    await registry.close()
    assert factory.live() == []


def write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


def test_reload_endpoint_applies_valid_and_refuses_invalid(make_config: Any, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    write(config, make_config({"a": {}}))
    settings = parse_settings(make_config({"a": {}}), tmp_path)
    app = create_app(settings, spawn=FakeWorkers().spawn, config_path=config)
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json={"model": "a", "messages": MSG}).status_code == 200
        config.write_text("models:\n  a:\n    model: {path: nowhere.gguf}\n")
        refused = client.post("/admin/reload")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "invalid_config" and "file not found" in error["message"]
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["a"]
        assert client.post("/v1/chat/completions", json={"model": "a", "messages": MSG}).status_code == 200

        write(config, make_config({"a": {}, "b": {}}))
        applied = client.post("/admin/reload").json()
        assert applied == {"reloaded": True, "added": ["b"], "removed": [], "changed": [], "unchanged": ["a"]}
        assert client.post("/v1/chat/completions", json={"model": "b", "messages": MSG}).status_code == 200
        states = {m["id"]: m["status"]["value"] for m in client.get("/v1/models").json()["data"]}
        assert states == {"a": "loaded", "b": "loaded"}


def test_reload_replaces_keys(make_config: Any, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    doc = make_config(
        {"a": {}}, gateway={"api_keys": [{"id": "one", "key": "first-key-123"}], "admin_key": "admin-123456"}
    )
    write(config, doc)
    app = create_app(parse_settings(doc, tmp_path), spawn=FakeWorkers().spawn, config_path=config)
    with TestClient(app) as client:
        admin = {"authorization": "Bearer admin-123456"}
        assert client.get("/v1/models", headers={"authorization": "Bearer first-key-123"}).status_code == 200
        doc["gateway"]["api_keys"] = [{"id": "two", "key": "second-key-123"}]
        write(config, doc)
        assert client.post("/admin/reload", headers=admin).status_code == 200
        assert client.get("/v1/models", headers={"authorization": "Bearer first-key-123"}).status_code == 401
        assert client.get("/v1/models", headers={"authorization": "Bearer second-key-123"}).status_code == 200


@pytest.mark.anyio
async def test_reload_racing_a_load_and_another_reload(make_config: Any, tmp_path: Path) -> None:
    from gateway.testing.fakellama import FakeScript

    before = parse_settings(make_config({"m": {}}), tmp_path)
    factory = FakeWorkers({"m": FakeScript(load_delay=0.05)})
    registry = Scheduler(before, inspect_models(before), factory.engine, budget=2**40)
    loading = asyncio.create_task(acquire(registry, "m"))
    await asyncio.sleep(0.01)
    first = parse_settings(make_config({"m": {"model": {"n_ctx": 100}}}), tmp_path)
    second = parse_settings(make_config({"m": {"model": {"n_ctx": 200}}}), tmp_path)
    registry.apply(first, inspect_models(first), 2**40)
    registry.apply(second, inspect_models(second), 2**40)
    old = await asyncio.wait_for(loading, 5)  # the request that started the load is served by it
    assert old.entry.model.n_ctx == 64
    waiting = asyncio.create_task(acquire(registry, "m"))
    await asyncio.sleep(0.2)  # several load delays: the new version must not start before the old drains
    assert not waiting.done()
    assert factory.loads == {"m": 1}
    old.release()
    fresh = await asyncio.wait_for(waiting, 5)
    assert fresh.entry.model.n_ctx == 200
    assert factory.loads == {"m": 2}
    fresh.release()
    await registry.close()
    assert factory.live() == []


@pytest.mark.anyio
async def test_a_reload_that_only_changes_aliases_keeps_the_model_loaded(make_config: Any, tmp_path: Path) -> None:
    before = parse_settings(make_config({"m": {"aliases": ["old-name"]}}), tmp_path)
    factory = FakeWorkers()
    registry = Scheduler(before, inspect_models(before), factory.engine, budget=2**40)
    first = await acquire(registry, "old-name")
    engine = first.engine
    first.release()

    after = parse_settings(make_config({"m": {"aliases": ["new-name"]}}), tmp_path)
    summary = registry.apply(after, inspect_models(after), 2**40).summary()
    assert summary["unchanged"] == ["m"] and summary["changed"] == []
    await asyncio.sleep(0.01)
    again = await acquire(registry, "new-name")
    assert again.engine is engine and engine.alive
    again.release()
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "old-name")
    assert info.value.code == "model_not_found"
    assert factory.loads == {"m": 1} and registry.view("m").entry.aliases == ["new-name"]
    await registry.close()
