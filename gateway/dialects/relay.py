"""The streaming loop both dialects share: chat chunks in, the dialect's named SSE events out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from gateway.dispatch import ChatStream
from gateway.errors import GatewayError, internal_error
from gateway.streaming import encode
from gateway.web import sse_event

log = logging.getLogger(__name__)
E = TypeVar("E")


class DialectEvents(Protocol[E]):
    """A dialect's event builder: opening events, events per chat chunk, a failure's, the closing ones."""

    def start(self) -> list[E]: ...
    def chunk(self, chunk: dict[str, Any]) -> list[E]: ...
    def error(self, exc: GatewayError) -> list[E]: ...
    def end(self) -> list[E]: ...


async def relay(
    stream: ChatStream,
    events: DialectEvents[E],
    frame: Callable[[E], tuple[str, dict[str, Any]]],
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[dict[str, str]]:
    """Yield `events`' frames for `stream` (`frame` gives an event's name and payload). A failure after
    the 200 ends the stream with the dialect's own error events; a bug of ours too, logged."""

    def frames(batch: list[E]) -> list[dict[str, str]]:
        return [sse_event(name, encode(payload)) for name, payload in map(frame, batch)]

    async with contextlib.aclosing(stream.chunks):
        for item in frames(events.start()):
            yield item
        try:
            async for chunk in stream.chunks:
                for item in frames(events.chunk(chunk)):
                    yield item
        except GatewayError as exc:
            for item in frames(events.error(exc)):
                yield item
            return
        except Exception as exc:
            log.exception("stream failed")
            for item in frames(events.error(internal_error(type(exc).__name__))):
                yield item
            return
        final = events.end()
        if before_end is not None:
            await before_end()
        for item in frames(final):
            yield item
