"""Conversations of the Responses API (`/v1/conversations`): each kept as one document (id, created_at,
metadata, the key that made it, its items in order) in the gateway's store, beside the stored
Responses: the same document store (`store/responses.py`'s `DocumentStore`, kind "conversation":
SQLite or PostgreSQL, bounded, the oldest go first), so the same interface."""

from __future__ import annotations

from gateway.store.responses import ResponseStore, Stored

Conversation = Stored
ConversationStore = ResponseStore
