"""HTTP behaviour over the fake llama.cpp: wire shapes, status codes, streams, disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

MSG = [{"role": "user", "content": "hello there"}]
# A reply that outlasts any test waiting for it to be cancelled.
LONG = {"m": {"model": {"n_ctx": 3072}}}
LONG_SCRIPT = {"m": FakeScript(reply_tokens=3000, step_delay=0.005)}


def make_app(
    make_config: Any,
    tmp_path: Path,
    models: dict[str, dict[str, Any]] | None = None,
    gateway: dict[str, Any] | None = None,
    scripts: dict[str, FakeScript] | None = None,
    budget: int | None = None,
) -> tuple[Starlette, FakeWorkers]:
    settings = parse_settings(make_config(models or {"m": {}}, gateway=gateway), tmp_path)
    workers = FakeWorkers(scripts)
    return create_app(settings, spawn=workers.spawn, budget=budget or 2**40), workers


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    app, _ = make_app(
        make_config,
        tmp_path,
        {"m": {"aliases": ["gpt-4o-mini"]}, "crashy": {}, "raw": {"_template": None}},
        scripts={"crashy": FakeScript(crash_after_steps=2, step_delay=0.02)},
    )
    with TestClient(app) as c:
        yield c


def sse_payloads(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error  # type: ignore[no-any-return]


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_models_list_shows_status_and_memory(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    cards = {c["id"]: c for c in data["data"]}
    assert set(cards) == {"m", "crashy", "raw"}
    for card in data["data"]:
        Model.model_validate(card)
        assert card["status"] == {"value": "unloaded"} and card["memory_bytes"] > 0
    client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["m"]["status"] == {"value": "loaded"}
    assert client.get("/v1/models/m").json()["id"] == "m"
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


def test_non_streaming_completion(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
    completion = ChatCompletion.model_validate(response.json())
    assert completion.model == "m"
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 8)


def test_max_tokens_and_max_completion_tokens(client: TestClient) -> None:
    body = {"model": "m", "messages": MSG, "max_tokens": 3}
    completion = ChatCompletion.model_validate(client.post("/v1/chat/completions", json=body).json())
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage and completion.usage.completion_tokens == 3
    body = {"model": "m", "messages": MSG, "max_tokens": 3, "max_completion_tokens": 2}
    completion = ChatCompletion.model_validate(client.post("/v1/chat/completions", json=body).json())
    assert completion.usage and completion.usage.completion_tokens == 2


def test_stop_sequence(client: TestClient) -> None:
    body = {"model": "m", "messages": MSG, "stop": ["tok3"]}
    completion = ChatCompletion.model_validate(client.post("/v1/chat/completions", json=body).json())
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_wire_format(client: TestClient, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MSG, "stream": True, "max_tokens": 5}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(p)) for p in payloads[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert len({c.id for c in chunks}) == 1
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5
    else:
        assert all(c.usage is None for c in chunks)


def test_unknown_model_is_404(client: TestClient) -> None:
    for stream in (False, True):
        response = client.post("/v1/chat/completions", json={"model": "nope", "messages": MSG, "stream": stream})
        assert_error(response, 404, "model_not_found", "model")


def test_bad_requests_are_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", content=b"{bad", headers={"content-type": "application/json"})
    assert_error(response, 400, None)
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": MSG, "max_tokens": -1})
    assert_error(response, 400, None, "max_tokens")
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "bot", "content": "x"}]})
    assert_error(response, 400, None, "messages[0].role")


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_before_stream_starts(client: TestClient, stream: bool) -> None:
    long = [{"role": "user", "content": "word " * 100}]  # n_ctx is 64 fake tokens
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": long, "stream": stream})
    error = assert_error(response, 400, "context_length_exceeded", "messages")
    assert "maximum context length is 64 tokens" in error["message"]


def test_model_without_chat_template(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "raw", "messages": MSG})
    error = assert_error(response, 400, "chat_template_missing", "model")
    assert "chat_format" in error["message"]


def test_failure_after_stream_start_is_in_band(client: TestClient) -> None:
    body = {"model": "crashy", "messages": MSG, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "model_worker_crashed"
    content = [json.loads(p) for p in payloads[:-2]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == "tok0 tok1 "
    # The crash cost only that request: the gateway and other models keep serving.
    assert client.post("/v1/chat/completions", json={"model": "m", "messages": MSG}).status_code == 200


def test_unknown_route_and_method_are_openai_shaped(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/chat/completions"), 405, "method_not_allowed")


@pytest.mark.anyio
async def test_queue_full_is_429_with_retry_after(make_config: Any, tmp_path: Path) -> None:
    app, _ = make_app(make_config, tmp_path, {"m": {"max_queue": 1}})
    registry = app.state.services.scheduler
    held = await registry.hold("m", generate=False).__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/chat/completions", json={"model": "m", "messages": MSG})
        assert_error(response, 429, "queue_full")
        assert response.headers["retry-after"] == "1"
        held.release()
        assert (await c.post("/v1/chat/completions", json={"model": "m", "messages": MSG})).status_code == 200
    await registry.close()


@pytest.mark.anyio
async def test_no_room_is_503_with_retry_after(make_config: Any, tmp_path: Path) -> None:
    app, _ = make_app(make_config, tmp_path, {"a": {}, "b": {}}, gateway={"room_wait": 0.05})
    registry = app.state.services.scheduler
    registry.budget = registry.view("a").facts.estimate.total + 1  # room for one
    held = await registry.hold("a", generate=False).__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/chat/completions", json={"model": "b", "messages": MSG})
        assert_error(response, 503, "model_capacity_unavailable")
        assert int(response.headers["retry-after"]) >= 1
    held.release()
    await registry.close()


async def drive_until_disconnect(
    app: Starlette,
    body: dict[str, Any],
    leave: Callable[[list[dict[str, Any]]], Awaitable[None]],
    path: str = "/v1/chat/completions",
) -> list[dict[str, Any]]:
    """Call the app at the ASGI level; the client disconnects once `leave(messages sent so far)` returns."""
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await leave(sent)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


@pytest.mark.anyio
async def test_client_disconnect_cancels_generation(make_config: Any, tmp_path: Path) -> None:
    """Driven at the ASGI level: the client disconnects after three chunks."""
    app, workers = make_app(make_config, tmp_path, LONG, scripts=LONG_SCRIPT)

    async def after_three_chunks(sent: list[dict[str, Any]]) -> None:
        while sum(1 for m in sent if m["type"] == "http.response.body" and m.get("body")) < 3:
            await asyncio.sleep(0.005)

    sent = await drive_until_disconnect(app, {"model": "m", "messages": MSG, "stream": True}, after_three_chunks)
    (worker,) = workers.workers
    assert sent[0]["status"] == 200
    assert (await worker.outcome(1)).finish_reason == "cancelled"
    assert worker.cancelled() == [1]
    assert app.state.services.scheduler.view("m").holds == 0
    # The model is free for the next request.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/chat/completions", json={"model": "m", "messages": MSG, "max_tokens": 2})
        assert response.status_code == 200
    await app.state.services.scheduler.close()


@pytest.mark.anyio
async def test_client_disconnect_cancels_a_non_streamed_generation(make_config: Any, tmp_path: Path) -> None:
    app, workers = make_app(make_config, tmp_path, LONG, scripts=LONG_SCRIPT)

    async def once_generating(sent: list[dict[str, Any]]) -> None:
        while not workers.workers or not workers.workers[0].generating():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    sent = await drive_until_disconnect(app, {"model": "m", "messages": MSG}, once_generating)
    (worker,) = workers.workers
    assert (await worker.outcome(1)).finish_reason == "cancelled" and worker.cancelled() == [1]
    assert sent[0]["status"] == 499
    assert app.state.services.scheduler.view("m").holds == 0
    await app.state.services.scheduler.close()
