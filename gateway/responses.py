"""OpenAI response bodies and stream chunks for chat and text completions. Pure: no I/O."""

from __future__ import annotations

import time
import uuid
from typing import Any


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class _Responder:
    object_name = ""
    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return self._chunk([], usage(prompt_tokens, completion_tokens))


class ChatResponder(_Responder):
    """Builds the response body or stream chunks for one chat completion."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def begin_chunks(self, index: int) -> list[dict[str, Any]]:
        return [self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]

    def text_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta": {"content": text}, "finish_reason": None}])

    def finish_chunk(self, index: int, finish_reason: str) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta": {}, "finish_reason": finish_reason}])

    def completion(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }


class CompletionResponder(_Responder):
    """Builds the response body or stream chunks for a legacy text completion (one choice per prompt)."""

    object_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str, echo: list[str] | None = None) -> None:
        super().__init__(model)
        self.echo = echo  # each prompt, when the client asked for it back

    def begin_chunks(self, index: int) -> list[dict[str, Any]]:
        return [self.text_chunk(index, self.echo[index])] if self.echo and self.echo[index] else []

    def text_chunk(self, index: int, text: str) -> dict[str, Any]:
        return self._chunk([{"text": text, "index": index, "logprobs": None, "finish_reason": None}])

    def finish_chunk(self, index: int, finish_reason: str) -> dict[str, Any]:
        return self._chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": finish_reason}])

    def completion(self, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "text": (self.echo[i] if self.echo else "") + text,
                    "index": i,
                    "logprobs": None,
                    "finish_reason": reason,
                }
                for i, (text, reason) in enumerate(choices)
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }


def model_card(model_id: str, created: int, status: str, memory_bytes: int) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "gateway",
        "status": {"value": status},
        "memory_bytes": memory_bytes,
    }
