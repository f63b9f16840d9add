"""`/v1/conversations` and its items: OpenAI's Conversations API, the state `POST /v1/responses` reads
and extends when given `conversation` (and the Agents SDK's `OpenAIConversationsSession` keeps its
history in). A conversation is visible only to the API key that made it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects.common import load_json
from gateway.dialects.responses.items import kept_items, page
from gateway.dialects.responses.reply import new_id
from gateway.errors import GatewayError, invalid_request
from gateway.store.conversations import Conversation, ConversationStore
from gateway.web.context import principal_of, services_of

MAX_ITEMS_PER_CALL = 20  # OpenAI's, for create and items.create


def _store(request: Request) -> ConversationStore:
    return services_of(request).conversations


def not_found(conversation_id: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, f"Conversation with id '{conversation_id}' not found.", param=param, code="not_found")


async def load(request: Request, conversation_id: str, param: str | None = None) -> Conversation:
    """A conversation this client's key made; any other is reported as not existing."""
    found = await asyncio.to_thread(_store(request).get, conversation_id)
    if found is None or found["key_id"] != principal_of(request).key_id:
        raise not_found(conversation_id, param)
    return found


async def save(request: Request, conversation: Conversation) -> None:
    await asyncio.to_thread(_store(request).put, conversation["id"], conversation)


def resource(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation["id"],
        "object": "conversation",
        "created_at": conversation["created_at"],
        "metadata": conversation["metadata"],
    }


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()
        )
    ):
        raise invalid_request(
            "Invalid 'metadata': at most 16 string values (keys ≤ 64, values ≤ 512 characters).", param="metadata"
        )
    return value


def _new_items(value: Any, taken: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ITEMS_PER_CALL:
        raise invalid_request(f"Invalid '{param}': a list of at most {MAX_ITEMS_PER_CALL} items.", param=param)
    return kept_items(value, {i["id"] for i in taken}, param)


async def create(request: Request) -> Response:
    body = load_json(await request.body())
    items = _new_items(body.get("items"), [], "items")
    conversation = {
        "id": new_id("conv"),
        "created_at": int(time.time()),
        "metadata": _metadata(body.get("metadata")),
        "key_id": principal_of(request).key_id,
        "items": items,
    }
    await save(request, conversation)
    return JSONResponse(resource(conversation))


async def retrieve(request: Request) -> Response:
    return JSONResponse(resource(await load(request, request.path_params["id"])))


async def update(request: Request) -> Response:
    conversation = await load(request, request.path_params["id"])
    body = load_json(await request.body())
    if "metadata" not in body:
        raise invalid_request("'metadata' is required.", param="metadata")
    conversation["metadata"] = _metadata(body["metadata"])
    await save(request, conversation)
    return JSONResponse(resource(conversation))


async def delete(request: Request) -> Response:
    conversation_id = request.path_params["id"]
    await load(request, conversation_id)
    await asyncio.to_thread(_store(request).delete, conversation_id)
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def add_items(request: Request) -> Response:
    conversation = await load(request, request.path_params["id"])
    body = load_json(await request.body())
    if "items" not in body:
        raise invalid_request("'items' is required.", param="items")
    added = _new_items(body["items"], conversation["items"], "items")
    conversation["items"] = [*conversation["items"], *added]
    await save(request, conversation)
    return JSONResponse(page(added, {"order": "asc", "limit": str(max(len(added), 1))}))


async def list_items(request: Request) -> Response:
    conversation = await load(request, request.path_params["id"])
    return JSONResponse(page(conversation["items"], dict(request.query_params)))


def _item_index(conversation: Conversation, item_id: str) -> int:
    for index, item in enumerate(conversation["items"]):
        if item["id"] == item_id:
            return index
    raise GatewayError(404, f"Item with id '{item_id}' not found.", code="not_found")


async def get_item(request: Request) -> Response:
    conversation = await load(request, request.path_params["id"])
    return JSONResponse(conversation["items"][_item_index(conversation, request.path_params["item_id"])])


async def delete_item(request: Request) -> Response:
    conversation = await load(request, request.path_params["id"])
    del conversation["items"][_item_index(conversation, request.path_params["item_id"])]
    await save(request, conversation)
    return JSONResponse(resource(conversation))
