"""The chat path's guarantees hold on /v1/messages and /v1/responses too: a client that goes away
cancels its generation, a full queue is refused before the 200 (in each API's shape), and counting
tokens holds the model only while it counts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.engine.fake import FakeScript
from tests.fast.test_http_fake import drive_until_disconnect, make_app

USER = [{"role": "user", "content": "hello there"}]
BODIES = {
    "/v1/messages": {"model": "m", "max_tokens": 100_000, "messages": USER},
    "/v1/responses": {"model": "m", "input": "hello there"},
}


@pytest.mark.anyio
@pytest.mark.parametrize("path", sorted(BODIES))
@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_generation(make_config: Any, tmp_path: Path, path: str, stream: bool) -> None:
    app, factory = make_app(
        make_config,
        tmp_path,
        {"m": {"model": {"n_ctx": 100_000}}},
        scripts={"m": FakeScript(reply_tokens=10_000, token_delay=0.005)},
    )

    async def once_generating(sent: list[dict[str, Any]]) -> None:
        while not factory.engines or not factory.engines[0]._tasks:
            await asyncio.sleep(0.01)
        if stream:
            while sum(1 for m in sent if m["type"] == "http.response.body" and m.get("body")) < 3:
                await asyncio.sleep(0.005)
        else:
            await asyncio.sleep(0.05)

    sent = await drive_until_disconnect(app, {**BODIES[path], "stream": stream}, once_generating, path)
    engine = factory.engines[0]
    assert sent[0]["status"] == (200 if stream else 499)
    assert engine.cancelled == [1] and engine.completed == []
    assert app.state.scheduler.view("m").holds == 0
    await app.state.scheduler.close()


@pytest.mark.anyio
async def test_queue_full_before_the_200_in_each_shape(make_config: Any, tmp_path: Path) -> None:
    app, _ = make_app(make_config, tmp_path, {"m": {"max_queue": 1}})
    registry = app.state.scheduler
    held = await registry.hold("m", generate=False).__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        claude = await c.post("/v1/messages", json={**BODIES["/v1/messages"], "stream": True})
        assert claude.status_code == 429 and claude.headers["retry-after"] == "1"
        assert claude.json()["error"]["type"] == "rate_limit_error"
        responses = await c.post("/v1/responses", json={**BODIES["/v1/responses"], "stream": True})
        assert responses.status_code == 429 and responses.json()["error"]["code"] == "queue_full"
        counted = await c.post("/v1/messages/count_tokens", json={"model": "m", "messages": USER})
        assert counted.status_code == 429
    held.release()
    await registry.close()


@pytest.mark.anyio
async def test_count_tokens_frees_the_model(make_config: Any, tmp_path: Path) -> None:
    app, factory = make_app(make_config, tmp_path, scripts={"m": FakeScript(reply_tokens=10_000, token_delay=0.005)})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        counted = await c.post("/v1/messages/count_tokens", json={"model": "m", "messages": USER})
        assert counted.json() == {"input_tokens": 2}
    assert factory.engines[0].cancelled == [1] and factory.engines[0].completed == []
    assert app.state.scheduler.view("m").holds == 0
    await app.state.scheduler.close()
