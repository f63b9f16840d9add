"""The model list in Anthropic's shape (`GET /v1/models` with an `anthropic-version` header): model
objects and the page `before_id`, `after_id` and `limit` ask for. Pure: built from OpenAI's cards."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.errors import invalid_request

DEFAULT_LIMIT, MAX_LIMIT = 20, 1000  # Anthropic's


def model_object(card: dict[str, Any]) -> dict[str, Any]:
    created = datetime.fromtimestamp(card.get("created") or 0, UTC)
    return {
        "type": "model",
        "id": card["id"],
        "display_name": card["id"],
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }


def model_page(cards: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """One page of the list: at most `limit` models after `after_id`, or the last ones before `before_id`."""
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid_request(f"limit: must be an integer from 1 to {MAX_LIMIT}", param="limit")
    ids = [c["id"] for c in cards]
    start, end = 0, len(cards)
    for name in ("after_id", "before_id"):
        if name in query and query[name] not in ids:
            raise invalid_request(f"{name}: no model '{query[name]}'", param=name)
    if "after_id" in query:
        start = ids.index(query["after_id"]) + 1
    if "before_id" in query:
        end = ids.index(query["before_id"])
        start = max(start, end - limit)
    page = [model_object(c) for c in cards[start : min(end, start + limit)]]
    more = start > 0 if "before_id" in query else start + limit < end
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
