"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API, translated to
a chat and back (`dialects.anthropic`). Local models only."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects.anthropic import reply
from gateway.dialects.anthropic.request import count_chat, parse_count_tokens_request, parse_messages_request, to_chat
from gateway.serving import run
from gateway.serving.plan import plan_local_chat
from gateway.serving.run import ChatStream
from gateway.web.context import call_of
from gateway.web.sse import respond, run_plan


async def messages(request: Request) -> Response:
    """Anthropic's `anthropic-version` header is accepted whatever its value; keys come as
    `x-api-key` (or Bearer) and are checked by the gate like any other."""
    body = parse_messages_request(await request.body())
    chat = to_chat(body)
    call = call_of(request)
    plan = plan_local_chat(call, chat, body.reasoning_ask())
    shows = body.shows_thinking

    def events(stream: ChatStream) -> reply.MessageEvents:
        return reply.MessageEvents(stream.model, stream.prompt_tokens, shows)

    return respond(request, await run_plan(request, call, plan), events, lambda answer: reply.message(answer, shows))


async def count_tokens(request: Request) -> Response:
    chat = count_chat(parse_count_tokens_request(await request.body()))
    call = call_of(request)
    plan = plan_local_chat(call, chat)
    return JSONResponse({"input_tokens": await run.prompt_tokens(call, plan)})
