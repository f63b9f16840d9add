"""What every HTTP endpoint shares: the app's parts for this request, SSE responses, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.requests import Request

from gateway.auth import ANONYMOUS, Principal
from gateway.record import RequestRecord
from gateway.scheduler import Scheduler
from gateway.upstream.proxy import Upstreams

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's name for it; only ever seen in the access log
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_PING_SECONDS = 15


def scheduler_of(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def upstreams_of(request: Request) -> Upstreams:
    upstreams: Upstreams = request.app.state.upstreams
    return upstreams


def principal_of(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


def record_of(request: Request) -> RequestRecord | None:
    return getattr(request.state, "record", None)


def sse_event(name: str, data: str) -> dict[str, str]:
    """A frame with an `event:` line (Anthropic's and the Responses API's streams name their events)."""
    return {"event": name, "data": data}


def sse(request: Request, events: AsyncIterator[Any], background: BackgroundTask | None = None) -> EventSourceResponse:
    """An SSE response: `events` yields `data:` payloads (str) or `sse_event` frames. `background`
    runs once the response is over, even when the client left before the stream was iterated."""
    return EventSourceResponse(
        events,
        headers=STREAM_HEADERS,
        sep="\n",
        ping=SSE_PING_SECONDS,
        shutdown_event=anyio.Event(),
        shutdown_grace_period=request.app.state.shutdown_grace,
        background=background,
    )


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, or cancel it (and so its generation and hold) when the client goes away first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()  # the handler itself was cancelled (shutdown): so is its work
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
        return await task  # could not watch the connection: just finish the work
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
