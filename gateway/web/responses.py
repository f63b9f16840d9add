"""`POST /v1/responses` (+ `GET`/`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`,
`POST /v1/responses/input_tokens`): OpenAI's Responses API, translated to a chat and back
(`dialects.responses`), with stored responses for `previous_response_id` and conversations
(`web/conversations.py`) for `conversation`. Local models only."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects.common import load_json
from gateway.dialects.responses import reply
from gateway.dialects.responses.events import ResponseEvents
from gateway.dialects.responses.input import kept_messages
from gateway.dialects.responses.items import kept_items, page
from gateway.dialects.responses.request import ResponsesRequest, input_messages, parse_responses_data, to_chat
from gateway.errors import GatewayError, invalid_request
from gateway.serving import run
from gateway.serving.plan import plan_local_chat
from gateway.serving.run import ChatStream
from gateway.store.responses import ResponseStore, Stored
from gateway.web import conversations
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


async def _history(request: Request, body: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat this request continues: a stored response's, or a conversation's items."""
    if body.previous_response_id:
        return list((await _stored(request, body.previous_response_id, "previous_response_id"))["messages"])
    if body.conversation_id:
        return kept_messages((await conversations.load(request, body.conversation_id, "conversation"))["items"])
    return []


def _skeleton(body: ResponsesRequest, model: str, tier: str | None) -> dict[str, Any]:
    base = reply.skeleton(body, model)
    if body.conversation_id:
        base["conversation"] = {"id": body.conversation_id}
    if tier is not None:
        base["service_tier"] = tier
    return base


async def _parsed(request: Request, counting: bool = False) -> ResponsesRequest:
    data = load_json(await request.body())
    items = data.get("input")
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, dict) and item.get("type") == "item_reference":
                items[index] = await _referenced(request, item.get("id"), f"input[{index}].id")
    return parse_responses_data(data, counting)


async def _referenced(request: Request, item_id: Any, param: str) -> dict[str, Any]:
    """The output item of a stored response (this key's) that an `item_reference` names."""
    place = reply.item_place(item_id) if isinstance(item_id, str) else None
    stored = await asyncio.to_thread(_store(request).get, place[0]) if place is not None else None
    if place is not None and stored is not None and stored.get("key_id") == principal_of(request).key_id:
        output = stored["response"]["output"]
        if place[1] < len(output) and output[place[1]]["id"] == item_id:
            return dict(output[place[1]])
    raise invalid_request(f"Item with id '{item_id}' not found (only stored responses' output items).", param=param)


async def create(request: Request) -> Response:
    body = await _parsed(request)
    history = await _history(request, body)
    chat = to_chat(body, history)
    call = call_of(request)
    plan = plan_local_chat(call, chat, body.reasoning_ask())
    outcome = await run_plan(request, call, plan)
    if outcome is None:
        return client_gone()
    tier = call.service_tier(plan.flex, body.service_tier)
    if isinstance(outcome, ChatStream):
        events = ResponseEvents(_skeleton(body, outcome.model, tier))

        async def keep() -> None:  # stored before the last event, so a client may continue at once
            await _keep(request, body, history, events.response)

        return stream_response(request, outcome, events, before_end=keep)
    answer = reply.response(_skeleton(body, outcome.model, tier), outcome)
    await _keep(request, body, history, answer)
    return JSONResponse(answer)


async def _keep(
    request: Request, body: ResponsesRequest, history: list[dict[str, Any]], answer: dict[str, Any]
) -> None:
    if answer["status"] == "failed":
        return
    if body.conversation_id:  # the input and the output join the conversation's items
        kept = await conversations.load(request, body.conversation_id, "conversation")
        taken = [i["id"] for i in kept["items"]]
        kept["items"] = [*kept["items"], *kept_items(body.input, taken), *answer["output"]]
        await conversations.save(request, kept)
    if body.store is False:
        return
    conversation = [*history, *input_messages(body), *reply.output_messages(answer["output"])]
    stored = {
        "response": answer,
        "messages": conversation,
        "input_items": kept_items(body.input),
        "key_id": principal_of(request).key_id,
    }
    await asyncio.to_thread(_store(request).put, answer["id"], stored)


async def input_items(request: Request) -> Response:
    """The items a stored response was given as its input, newest first unless `order=asc`."""
    stored = await _stored(request, request.path_params["id"])
    return JSONResponse(page(stored.get("input_items", []), dict(request.query_params)))


async def input_tokens(request: Request) -> Response:
    """What a request's input would take in tokens, measured as `/v1/messages/count_tokens` measures:
    the prompt rendered and tokenized by the model's worker, nothing generated."""
    body = await _parsed(request, counting=True)
    chat = to_chat(body, await _history(request, body))
    call = call_of(request)
    plan = plan_local_chat(call, chat)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": await run.prompt_tokens(call, plan)})


async def retrieve(request: Request) -> Response:
    return JSONResponse((await _stored(request, request.path_params["id"]))["response"])


async def delete(request: Request) -> Response:
    response_id = request.path_params["id"]
    await _stored(request, response_id)
    await asyncio.to_thread(_store(request).delete, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
