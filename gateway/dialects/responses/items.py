"""Items as the Responses API keeps them (a response's input items, a conversation's items): each with
an id and a status, message text as content parts; and a page of them as OpenAI's cursor lists give it
(`limit`, `order`, `after`). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.dialects.responses.input import check_items
from gateway.dialects.responses.reply import new_id
from gateway.errors import invalid_request

_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
DEFAULT_LIMIT, MAX_LIMIT = 20, 100  # OpenAI's, for input items and conversation items


def kept_items(
    raw: str | list[dict[str, Any]], taken: Collection[str] = (), param: str = "input"
) -> list[dict[str, Any]]:
    """Input (a string or items, checked as `POST /v1/responses` checks them) as kept items: an id
    each (the client's, unless it is taken), `status: completed`, a message's text as content parts."""
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    check_items(items, param)
    out: list[dict[str, Any]] = []
    used = set(taken)
    for item in items:
        kind = item.get("type") or "message"
        given = item.get("id")
        item_id = given if isinstance(given, str) and given and given not in used else new_id(_ID_PREFIXES[kind])
        used.add(item_id)
        kept = {**item, "type": kind, "id": item_id, "status": "completed"}
        if kind == "message" and isinstance(kept["content"], str):
            part = "output_text" if kept["role"] == "assistant" else "input_text"
            kept["content"] = [{"type": part, "text": kept["content"]}]
        out.append(kept)
    return out


def page(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """One page of a cursor list: `order` desc (newest first, OpenAI's default) or asc, `after` an
    item id, at most `limit` items."""
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid_request(f"Invalid 'limit': an integer from 1 to {MAX_LIMIT}.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_request("Invalid 'order': 'asc' or 'desc'.", param="order")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if "after" in query:
        ids = [i["id"] for i in ordered]
        if query["after"] not in ids:
            raise invalid_request(f"Invalid 'after': no item '{query['after']}'.", param="after")
        start = ids.index(query["after"]) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ordered),
    }
