"""Operations over the fake llama.cpp: keys, limits, CORS, request ids, access log, metrics, admin, health."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.access.keys import Principal
from gateway.access.limits import Limiter
from gateway.config import parse_settings
from gateway.errors import ConfigError
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

MSG = [{"role": "user", "content": "secret prompt words"}]
ALICE = "alice-key-123456"
BOB = "bob-key-1234567"
ADMIN = "admin-key-123456"


def app_client(
    make_config: Any,
    tmp_path: Path,
    gateway: dict[str, Any],
    models: dict[str, Any] | None = None,
    scripts: dict[str, FakeScript] | None = None,
) -> TestClient:
    doc = make_config(models or {"a": {"aliases": ["a-alias"]}, "b": {}}, gateway=gateway)
    app = create_app(parse_settings(doc, tmp_path), spawn=FakeWorkers(scripts).spawn)
    return TestClient(app)


@pytest.fixture
def secured(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    gateway = {
        "api_keys": [
            {"id": "alice", "key": ALICE, "models": ["a-alias"]},
            {"id": "bob", "sha256": hashlib.sha256(BOB.encode()).hexdigest(), "rpm": 2},
        ],
        "admin_key": ADMIN,
        "access_log": str(tmp_path / "access.log"),
        "cors_origins": ["https://chat.example"],
        "max_body_bytes": 2000,
    }
    with app_client(make_config, tmp_path, gateway) as client:
        yield client


def chat(client: TestClient, model: str, key: str | None = None, header: str = "authorization", **extra: Any) -> Any:
    headers = {}
    if key is not None:
        headers = {"authorization": f"Bearer {key}"} if header == "authorization" else {"x-api-key": key}
    return client.post("/v1/chat/completions", json={"model": model, "messages": MSG, **extra}, headers=headers)


def test_auth_matrix(secured: TestClient) -> None:
    assert chat(secured, "a").status_code == 401
    missing = chat(secured, "a").json()["error"]
    assert missing["code"] == "invalid_api_key" and "Missing API key" in missing["message"]
    assert chat(secured, "a", "wrong-key-000000").status_code == 401
    assert chat(secured, "a", ALICE).status_code == 200
    assert chat(secured, "a", ALICE, header="x-api-key").status_code == 200
    disallowed = chat(secured, "b", ALICE)
    assert disallowed.status_code == 404 and disallowed.json()["error"]["code"] == "model_not_found"
    assert chat(secured, "b", BOB).status_code == 200  # stored as a sha256 digest
    listed = secured.get("/v1/models", headers={"authorization": f"Bearer {ALICE}"}).json()["data"]
    assert [m["id"] for m in listed] == ["a"]
    assert secured.get("/v1/models/b", headers={"authorization": f"Bearer {ALICE}"}).status_code == 404
    assert secured.get("/v1/models").status_code == 401
    assert secured.get("/health").status_code == 200  # public
    assert secured.get("/metrics").status_code == 200


def test_admin_needs_the_admin_key(secured: TestClient) -> None:
    assert secured.get("/admin/models").status_code == 401
    assert secured.get("/admin/models", headers={"authorization": f"Bearer {ALICE}"}).status_code == 401
    response = secured.get("/admin/models", headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    assert {m["id"] for m in response.json()["models"]} == {"a", "b"}
    assert chat(secured, "a", ADMIN).status_code == 401  # the admin key is not a client key


def test_rate_limit_per_key(secured: TestClient) -> None:
    assert chat(secured, "b", BOB).status_code == 200
    assert chat(secured, "b", BOB).status_code == 200
    limited = chat(secured, "b", BOB)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert chat(secured, "a", ALICE).status_code == 200  # other keys are not affected


def test_rate_limiter_window_slides() -> None:
    now = [0.0]
    limiter = Limiter(clock=lambda: now[0])
    key = Principal("k", None, 2)
    admit = lambda: asyncio.run(limiter.admit(key, 0)).error  # noqa: E731
    assert admit() is None
    now[0] = 30
    assert admit() is None
    refused = admit()
    assert refused is not None and refused.retry_after == pytest.approx(30)
    now[0] = 60.5
    assert admit() is None


def test_body_limit(secured: TestClient) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    response = secured.post(
        "/v1/chat/completions", json={"model": "a", "messages": big}, headers={"authorization": f"Bearer {ALICE}"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "a", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    response = secured.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={"authorization": f"Bearer {ALICE}", "content-type": "application/json"},
    )
    assert response.status_code == 413


def test_cors(secured: TestClient) -> None:
    preflight = {
        "origin": "https://chat.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    allowed = secured.options("/v1/chat/completions", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
    denied = secured.options("/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers


def test_cors_is_off_by_default(make_config: Any, tmp_path: Path) -> None:
    with app_client(make_config, tmp_path, {}) as client:
        response = client.get("/health", headers={"origin": "https://chat.example"})
        assert "access-control-allow-origin" not in response.headers


def test_request_id_is_honoured_and_returned(secured: TestClient) -> None:
    response = chat(secured, "a", ALICE)
    assert response.headers["x-request-id"].startswith("req_")
    response = secured.get("/health", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_access_log_lines_are_json_without_prompts(secured: TestClient, tmp_path: Path) -> None:
    chat(secured, "a", ALICE, max_tokens=3)
    with secured.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "a", "messages": MSG, "stream": True},
        headers={"authorization": f"Bearer {ALICE}", "x-request-id": "stream-1"},
    ) as r:
        r.read()
    chat(secured, "a", "wrong-key-000000")
    text = (tmp_path / "access.log").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert "secret" not in text and "tok0" not in text
    first, streamed, denied = lines[-3:]
    assert first["key_id"] == "alice" and first["model"] == "a" and first["status"] == 200
    assert first["endpoint"] == "/v1/chat/completions" and first["completion_tokens"] == 3
    assert first["prompt_tokens"] == 3 and first["ttft_ms"] is not None and first["duration_ms"] >= 0
    assert first["client"]
    assert streamed["request_id"] == "stream-1" and streamed["completion_tokens"] == 8
    assert denied["status"] == 401 and denied["key_id"] is None


def test_access_log_with_content(make_config: Any, tmp_path: Path) -> None:
    log = tmp_path / "content.log"
    with app_client(make_config, tmp_path, {"access_log": str(log), "log_content": True}) as client:
        chat(client, "a", max_tokens=2)
        refused = client.post(
            "/v1/chat/completions",
            json={"model": "a", "messages": [{"role": "user", "content": "refused words"}], "logit_bias": {"99999": 1}},
        )
    assert refused.status_code == 400
    answered, refused_line = (json.loads(line) for line in log.read_text().splitlines()[-2:])
    assert answered["messages"][0]["content"] == "secret prompt words"
    assert answered["output"] == "tok0 tok1 "
    # A request refused by its plan is still logged with what it asked.
    assert refused_line["status"] == 400 and refused_line["messages"][0]["content"] == "refused words"


def metric_values(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_move(make_config: Any, tmp_path: Path) -> None:
    with app_client(make_config, tmp_path, {"memory_budget": "1GiB"}) as client:
        before = metric_values(client)
        assert before[("gateway_model_loaded", (("model", "a"),))] == 0
        chat(client, "a", max_tokens=4)
        chat(client, "nope")
        after = metric_values(client)
    ok = ("gateway_requests_total", (("endpoint", "/v1/chat/completions"), ("model", "a"), ("status", "200")))
    assert after[ok] == 1
    missing = ("gateway_requests_total", (("endpoint", "/v1/chat/completions"), ("model", ""), ("status", "404")))
    assert after[missing] == 1
    assert after[("gateway_completion_tokens_total", (("model", "a"),))] == 4
    assert after[("gateway_prompt_tokens_total", (("model", "a"),))] == 3
    assert after[("gateway_time_to_first_token_seconds_count", (("model", "a"),))] == 1
    assert after[("gateway_model_loads_total", (("model", "a"), ("outcome", "ok")))] == 1
    assert after[("gateway_model_loaded", (("model", "a"),))] == 1
    assert after[("gateway_memory_budget_bytes", ())] == 2**30
    assert after[("gateway_model_estimated_bytes", (("model", "a"),))] > 0


def test_ready_waits_for_pinned_models(make_config: Any, tmp_path: Path) -> None:
    models = {"p": {"pinned": True}, "a": {}}
    with app_client(make_config, tmp_path, {}, models, scripts={"p": FakeScript(load_delay=0.3)}) as client:
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health").status_code == 200
        import time

        deadline = time.monotonic() + 10
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health/ready").json() == {"status": "ready"}


def test_admin_load_list_unload(make_config: Any, tmp_path: Path) -> None:
    with app_client(make_config, tmp_path, {}, {"a": {"ttl": "10m"}, "b": {}}) as client:
        loaded = client.post("/admin/models/a/load").json()
        assert loaded["state"] == "loaded"
        listing = {m["id"]: m for m in client.get("/admin/models").json()["models"]}
        assert listing["a"]["idle_expires_in"] > 590
        assert listing["b"]["state"] == "unloaded" and listing["b"]["idle_expires_in"] is None
        assert listing["a"]["leases"] == 0 and listing["a"]["in_flight"] == 0 and listing["a"]["queued"] == 0
        assert client.post("/admin/models/a/unload").json()["state"] == "unloaded"
        client.post("/admin/models/b/load")
        assert client.post("/admin/models/b/unload?force=true").json()["state"] == "unloaded"
        assert client.post("/admin/models/nope/load").status_code == 404


def test_admin_is_open_without_any_keys(make_config: Any, tmp_path: Path) -> None:
    with app_client(make_config, tmp_path, {}) as client:
        assert client.get("/admin/models").status_code == 200


def test_reload_without_a_file_says_so(make_config: Any, tmp_path: Path) -> None:
    with app_client(make_config, tmp_path, {}) as client:
        response = client.post("/admin/reload")
        assert response.status_code == 400 and "embedded default" in response.json()["error"]["message"]


def test_env_references_in_config(make_config: Any, tmp_path: Path) -> None:
    doc = make_config({"a": {}}, gateway={"api_keys": [{"id": "k", "key": "${GW_KEY}"}], "admin_key": "${GW_ADMIN}"})
    settings = parse_settings(doc, tmp_path, environ={"GW_KEY": "from-env-123456", "GW_ADMIN": "admin-from-env"})
    assert settings.gateway.api_keys[0].key == "from-env-123456"
    with pytest.raises(ConfigError, match=r"gateway\.api_keys\.0\.key: environment variable GW_KEY is not set"):
        parse_settings(
            make_config({"a": {}}, gateway={"api_keys": [{"id": "k", "key": "${GW_KEY}"}]}), tmp_path, environ={}
        )


def test_key_config_errors(make_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of 'key' and 'sha256'"):
        parse_settings(make_config({"a": {}}, gateway={"api_keys": [{"id": "k"}]}), tmp_path)
    with pytest.raises(ConfigError, match="no model or alias named 'ghost'"):
        parse_settings(
            make_config({"a": {}}, gateway={"api_keys": [{"id": "k", "key": ALICE, "models": ["ghost"]}]}), tmp_path
        )
