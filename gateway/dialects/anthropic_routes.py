"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API over the chat path."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects import anthropic_reply
from gateway.dialects.anthropic_reply import MessageEvents
from gateway.dialects.anthropic_request import count_chat, parse_count_tokens_request, parse_messages_request, to_chat
from gateway.dialects.relay import relay
from gateway.dispatch import ChatStream
from gateway.routes import prompt_tokens, run_chat
from gateway.web import CLIENT_CLOSED_REQUEST, sse


async def messages(request: Request) -> Response:
    """Anthropic's `anthropic-version` header is accepted whatever its value; keys come as
    `x-api-key` (or Bearer) and are checked by the gateway's middleware like any other."""
    outcome = await run_chat(request, to_chat(parse_messages_request(await request.body())))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(outcome, ChatStream):
        return sse(request, _events(outcome), BackgroundTask(outcome.close))  # released even if never read
    return JSONResponse(anthropic_reply.message(outcome.body, outcome.stop_sequences.get(0)))


def _events(stream: ChatStream) -> AsyncIterator[dict[str, str]]:
    return relay(stream, MessageEvents(stream.model, stream.prompt_tokens, stream.stop_sequences), lambda event: event)


async def count_tokens(request: Request) -> Response:
    chat = count_chat(parse_count_tokens_request(await request.body()))
    return JSONResponse({"input_tokens": await prompt_tokens(request, chat)})
