"""How an answer leaves: one SSE framing for every API (its events, a failure after the 200 in-band
in the API's own shape), JSON otherwise, and nothing when the client has gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError, internal_error
from gateway.protocol.answer import Answer, Chunk
from gateway.serving import run
from gateway.serving.call import Call
from gateway.serving.plan import Plan
from gateway.serving.run import ChatStream
from gateway.upstream.proxy import Reply
from gateway.web.context import services_of

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's name for it; only ever seen in the access log
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_PING_SECONDS = 15

# An SSE frame: its `event:` name (None: a `data:` line alone, as OpenAI's streams are) and its data,
# a JSON object or a bare string (OpenAI's `[DONE]`).
Frame = tuple[str | None, dict[str, Any] | str]


class Events(Protocol):
    """An API's stream of one answer: its opening frames, the frames of each chunk, the frames that
    end it after a failure, and the closing ones."""

    def start(self) -> Sequence[Frame]: ...
    def chunk(self, chunk: Chunk) -> Sequence[Frame]: ...
    def error(self, exc: GatewayError) -> Sequence[Frame]: ...
    def end(self) -> Sequence[Frame]: ...


def encode(payload: dict[str, Any] | str) -> str:
    return payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _sse_frames(frames: Sequence[Frame]) -> list[dict[str, str] | str]:
    return [encode(data) if name is None else {"event": name, "data": encode(data)} for name, data in frames]


async def _relay(
    stream: ChatStream, events: Events, before_end: Callable[[], Awaitable[None]] | None
) -> AsyncIterator[dict[str, str] | str]:
    """`events`' frames for `stream`. A failure after the 200 ends the stream with the API's error
    frames; a bug of ours too, logged."""
    async with contextlib.aclosing(stream.chunks):
        for frame in _sse_frames(events.start()):
            yield frame
        try:
            async for chunk in stream.chunks:
                for frame in _sse_frames(events.chunk(chunk)):
                    yield frame
        except GatewayError as exc:
            for frame in _sse_frames(events.error(exc)):
                yield frame
            return
        except Exception as exc:
            log.exception("stream failed")
            for frame in _sse_frames(events.error(internal_error(type(exc).__name__))):
                yield frame
            return
        final = events.end()
        if before_end is not None:
            await before_end()
        for frame in _sse_frames(final):
            yield frame


def sse(request: Request, frames: AsyncIterator[Any], close: Callable[[], Awaitable[None]] | None) -> Response:
    """An SSE response of `frames` (`data:` payloads, or `{"event", "data"}`). `close` runs once the
    response is over, even when the client left before the stream was iterated."""
    return EventSourceResponse(
        frames,
        headers=STREAM_HEADERS,
        sep="\n",
        ping=SSE_PING_SECONDS,
        shutdown_event=anyio.Event(),
        shutdown_grace_period=services_of(request).shutdown_grace,
        background=BackgroundTask(close) if close is not None else None,
    )


async def run_plan(request: Request, call: Call, plan: Plan) -> ChatStream | Answer | None:
    """Begin a streamed answer (its errors until then still raised with their own status), or run a
    whole one, cancelled when the client goes away first (None)."""
    if plan.stream:
        return await run.open_stream(call, plan)
    return await unless_disconnected(request, run.answer(call, plan))


def client_gone() -> Response:
    """The answer to a client that went away: nobody reads it; the access log does."""
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def stream_response(
    request: Request, stream: ChatStream, events: Events, before_end: Callable[[], Awaitable[None]] | None = None
) -> Response:
    """A begun answer as an SSE stream of an API's `events`; the hold is released when the response is
    over, read or not. `before_end` runs before the closing frames are sent."""
    return sse(request, _relay(stream, events, before_end), stream.close)


def respond(
    request: Request,
    outcome: ChatStream | Answer | None,
    events: Callable[[ChatStream], Events],
    body: Callable[[Answer], dict[str, Any]],
) -> Response:
    """A local answer in an API's shape: the stream of its `events`, its JSON `body`, or nothing for a
    client that went away."""
    if outcome is None:
        return client_gone()
    if isinstance(outcome, ChatStream):
        return stream_response(request, outcome, events(outcome))
    return JSONResponse(body(outcome))


def respond_remote(request: Request, reply: Reply | None) -> Response:
    """A remote model's answer as its server gave it (a stream's events are already framed)."""
    if reply is None:
        return client_gone()
    if reply.events is not None:
        return sse(request, reply.events, reply.close)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


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
