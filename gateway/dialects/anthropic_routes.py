"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API over the chat path."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects import anthropic_reply
from gateway.dialects.anthropic_reply import Event, MessageEvents
from gateway.dialects.anthropic_request import count_chat, parse_count_tokens_request, parse_messages_request, to_chat
from gateway.dispatch import ChatStream
from gateway.errors import GatewayError, internal_error
from gateway.routes import prompt_tokens, run_chat
from gateway.streaming import encode
from gateway.web import CLIENT_CLOSED_REQUEST, sse, sse_event

log = logging.getLogger(__name__)


async def messages(request: Request) -> Response:
    """Anthropic's `anthropic-version` header is accepted whatever its value; keys come as
    `x-api-key` (or Bearer) and are checked by the gateway's middleware like any other."""
    outcome = await run_chat(request, to_chat(parse_messages_request(await request.body())))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(outcome, ChatStream):
        return sse(request, _events(outcome), BackgroundTask(outcome.close))  # released even if never read
    return JSONResponse(anthropic_reply.message(outcome))


async def _events(stream: ChatStream) -> AsyncIterator[dict[str, str]]:
    events = MessageEvents(stream.model, stream.prompt_tokens)

    def frames(batch: list[Event]) -> list[dict[str, str]]:
        return [sse_event(name, encode(payload)) for name, payload in batch]

    async with contextlib.aclosing(stream.chunks):
        for frame in frames(events.start()):
            yield frame
        try:
            async for chunk in stream.chunks:
                for frame in frames(events.chunk(chunk)):
                    yield frame
        except GatewayError as exc:
            yield frames([events.error(exc)])[0]
            return
        except Exception as exc:  # a bug of ours: still end the stream in Anthropic's way
            log.exception("stream failed")
            yield frames([events.error(internal_error(type(exc).__name__))])[0]
            return
        for frame in frames(events.end()):
            yield frame


async def count_tokens(request: Request) -> Response:
    chat = count_chat(parse_count_tokens_request(await request.body()))
    return JSONResponse({"input_tokens": await prompt_tokens(request, chat)})
