"""A client that leaves while a remote model's server is still working cancels the upstream request
(streamed or not), and the model's in-flight count comes back to zero."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.test_http_fake import drive_until_disconnect

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_leaving_cancels_the_upstream_request(make_config: Any, tmp_path: Path, stream: bool) -> None:
    arrived, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_server(request: httpx.Request) -> httpx.Response:
        arrived.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return httpx.Response(500)

    doc = make_config({"local": {}})
    doc["models"]["remote"] = {"upstream": [{"base_url": "http://a.test/v1"}]}
    settings = parse_settings(doc, tmp_path)
    app = create_app(settings, spawn=FakeWorkers().spawn, upstream_transport=httpx.MockTransport(slow_server))

    async def once_sent(sent: list[dict[str, Any]]) -> None:
        await arrived.wait()

    body = {"model": "remote", "messages": MSG, "stream": stream}
    sent = await drive_until_disconnect(app, body, once_sent)
    await asyncio.wait_for(cancelled.wait(), 10)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
    assert app.state.services.upstreams.get("remote").in_flight == 0
    await app.state.services.upstreams.close()
