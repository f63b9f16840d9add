"""`POST /v1/responses` (+ `GET`/`DELETE /v1/responses/{id}`): OpenAI's Responses API, translated to a
chat and back (`dialects.responses`), with stored responses for `previous_response_id`. Local models
only."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects.responses import reply
from gateway.dialects.responses.events import ResponseEvents
from gateway.dialects.responses.request import ResponsesRequest, input_messages, parse_responses_request, to_chat
from gateway.errors import GatewayError
from gateway.serving.plan import plan_local_chat
from gateway.serving.run import ChatStream
from gateway.store.responses import ResponseStore, Stored
from gateway.web.context import call_of, principal_of, services_of
from gateway.web.sse import client_gone, run_plan, stream_response


def _store(request: Request) -> ResponseStore:
    return services_of(request).responses


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
    chat = to_chat(body, history)
    call = call_of(request)
    plan = plan_local_chat(call, chat, body.reasoning_ask())
    outcome = await run_plan(request, call, plan)
    if outcome is None:
        return client_gone()
    if isinstance(outcome, ChatStream):
        events = ResponseEvents(reply.skeleton(body, outcome.model))

        async def keep() -> None:  # stored before the last event, so a client may continue at once
            await _keep(request, body, history, events.response)

        return stream_response(request, outcome, events, before_end=keep)
    answer = reply.response(reply.skeleton(body, outcome.model), outcome)
    await _keep(request, body, history, answer)
    return JSONResponse(answer)


async def _keep(
    request: Request, body: ResponsesRequest, history: list[dict[str, Any]], answer: dict[str, Any]
) -> None:
    if body.store is False or answer["status"] == "failed":
        return
    conversation = [*history, *input_messages(body), *reply.output_messages(answer["output"])]
    stored = {"response": answer, "messages": conversation, "key_id": principal_of(request).key_id}
    await asyncio.to_thread(_store(request).put, answer["id"], stored)


async def retrieve(request: Request) -> Response:
    return JSONResponse((await _stored(request, request.path_params["id"]))["response"])


async def delete(request: Request) -> Response:
    response_id = request.path_params["id"]
    await _stored(request, response_id)
    await asyncio.to_thread(_store(request).delete, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
