"""Conversations of the Responses API (`/v1/conversations`): each kept as one document (id, created_at,
metadata, the key that made it, its items in order), in memory, bounded (the oldest go first). The
interface is `store/responses.py`'s (get, put, delete, close), so it can move to the same backends."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol

Conversation = dict[str, Any]


class ConversationStore(Protocol):
    def get(self, conversation_id: str) -> Conversation | None: ...
    def put(self, conversation_id: str, conversation: Conversation) -> None: ...
    def delete(self, conversation_id: str) -> bool: ...
    def close(self) -> None: ...


class MemoryConversations:
    """A bounded dict; calls come from worker threads (`asyncio.to_thread`), so a lock serialises them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Conversation] = OrderedDict()

    def get(self, conversation_id: str) -> Conversation | None:
        with self._lock:
            found = self._items.get(conversation_id)
            return None if found is None else {**found, "items": list(found["items"])}

    def put(self, conversation_id: str, conversation: Conversation) -> None:
        with self._lock:
            self._items[conversation_id] = conversation
            self._items.move_to_end(conversation_id)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def delete(self, conversation_id: str) -> bool:
        with self._lock:
            return self._items.pop(conversation_id, None) is not None

    def close(self) -> None:
        with self._lock:
            self._items.clear()
