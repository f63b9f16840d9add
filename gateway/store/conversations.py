"""Conversations of the Responses API (`/v1/conversations`): each kept as one document (id, created_at,
metadata, the key that made it, its items in order) in the gateway's store, beside the stored
Responses (`store/responses.py`'s `DocumentStore`, kind "conversation": SQLite or PostgreSQL, bounded,
the oldest go first)."""

from __future__ import annotations

from typing import Any, Protocol

Conversation = dict[str, Any]


class ConversationStore(Protocol):
    def get(self, conversation_id: str) -> Conversation | None: ...
    def put(self, conversation_id: str, conversation: Conversation) -> None: ...
    def delete(self, conversation_id: str) -> bool: ...
    def close(self) -> None: ...
