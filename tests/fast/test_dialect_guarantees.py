"""The chat path's guarantees hold on /v1/messages and /v1/responses too: a client that goes away
cancels its generation, a full queue is refused before the 200 (in each API's shape), and counting
tokens holds the model only while it counts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.fakeworker import until
from tests.fast.test_http_fake import LONG, LONG_SCRIPT, drive_until_disconnect, make_app

USER = [{"role": "user", "content": "hello there"}]
BODIES = {
    "/v1/messages": {"model": "m", "max_tokens": 100_000, "messages": USER},
    "/v1/responses": {"model": "m", "input": "hello there"},
}


@pytest.mark.anyio
@pytest.mark.parametrize("path", sorted(BODIES))
@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_generation(make_config: Any, tmp_path: Path, path: str, stream: bool) -> None:
    app, workers = make_app(make_config, tmp_path, LONG, scripts=LONG_SCRIPT)

    async def once_generating(sent: list[dict[str, Any]]) -> None:
        while not workers.workers or not workers.workers[0].generating():
            await asyncio.sleep(0.01)
        if stream:
            while sum(1 for m in sent if m["type"] == "http.response.body" and m.get("body")) < 3:
                await asyncio.sleep(0.005)
        else:
            await asyncio.sleep(0.05)

    sent = await drive_until_disconnect(app, {**BODIES[path], "stream": stream}, once_generating, path)
    (worker,) = workers.workers
    assert sent[0]["status"] == (200 if stream else 499)
    assert (await worker.outcome(1)).finish_reason == "cancelled" and worker.cancelled() == [1]
    assert app.state.services.scheduler.view("m").holds == 0
    await app.state.services.scheduler.close()


@pytest.mark.anyio
async def test_queue_full_before_the_200_in_each_shape(make_config: Any, tmp_path: Path) -> None:
    app, _ = make_app(make_config, tmp_path, {"m": {"max_queue": 1}})
    registry = app.state.services.scheduler
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
    app, workers = make_app(make_config, tmp_path, LONG, scripts=LONG_SCRIPT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        counted = await c.post("/v1/messages/count_tokens", json={"model": "m", "messages": USER})
        assert counted.json() == {"input_tokens": 2}
    assert app.state.services.scheduler.view("m").holds == 0
    # Counting asks for one token, which the worker samples in the step that reads the prompt: the
    # cancel that follows the count finds the generation ended, having produced no more than that.
    (worker,) = workers.workers
    await until(lambda: worker.cancelled() == [1], "counting did not cancel its generation")
    assert (await worker.outcome(1)).completion_tokens <= 1
    await app.state.services.scheduler.close()
