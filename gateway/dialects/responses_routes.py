"""`POST /v1/responses` (+ `GET`/`DELETE /v1/responses/{id}`): OpenAI's Responses API over the chat path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects import responses_reply
from gateway.dialects.relay import relay
from gateway.dialects.response_store import ResponseStore, Stored
from gateway.dialects.responses_events import ResponseEvents
from gateway.dialects.responses_request import ResponsesRequest, input_messages, parse_responses_request, to_chat
from gateway.dispatch import ChatStream
from gateway.errors import GatewayError
from gateway.routes import run_chat
from gateway.web import CLIENT_CLOSED_REQUEST, principal_of, sse


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses_store
    return store


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    what = "Previous response" if param else "Response"
    return GatewayError(
        404,
        f"{what} with id '{response_id}' not found.",
        param=param,
        code="previous_response_not_found" if param else None,
    )


async def _stored(request: Request, response_id: str, param: str | None = None) -> Stored:
    """A stored response this client's key made; any other is reported as not existing."""
    stored = await asyncio.to_thread(_store(request).get, response_id)
    if stored is None or stored.get("key_id") != principal_of(request).key_id:
        raise not_found(response_id, param)
    return stored


async def create(request: Request) -> Response:
    body = parse_responses_request(await request.body())
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        history = (await _stored(request, body.previous_response_id, "previous_response_id"))["messages"]
    outcome = await run_chat(request, to_chat(body, history))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(outcome, ChatStream):
        base = responses_reply.skeleton(body, outcome.model)
        return sse(request, _events(request, body, history, outcome, base), BackgroundTask(outcome.close))
    answer = responses_reply.response(responses_reply.skeleton(body, outcome.body["model"]), outcome.body)
    await _keep(request, body, history, answer)
    return JSONResponse(answer)


async def _keep(
    request: Request, body: ResponsesRequest, history: list[dict[str, Any]], answer: dict[str, Any]
) -> None:
    if body.store is False or answer["status"] == "failed":
        return
    conversation = [*history, *input_messages(body), *responses_reply.output_messages(answer["output"])]
    stored = {"response": answer, "messages": conversation, "key_id": principal_of(request).key_id}
    await asyncio.to_thread(_store(request).put, answer["id"], stored)


def _events(
    request: Request, body: ResponsesRequest, history: list[dict[str, Any]], stream: ChatStream, base: dict[str, Any]
) -> AsyncIterator[dict[str, str]]:
    events = ResponseEvents(base)

    async def keep() -> None:  # stored before the last event, so a client may continue at once
        await _keep(request, body, history, events.response)

    return relay(stream, events, lambda event: (event["type"], event), before_end=keep)


async def retrieve(request: Request) -> Response:
    return JSONResponse((await _stored(request, request.path_params["response_id"]))["response"])


async def delete(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    await _stored(request, response_id)
    await asyncio.to_thread(_store(request).delete, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
