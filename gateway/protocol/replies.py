"""OpenAI's shapes of an answer: response bodies and stream chunks for chat and text completions,
rendered from `answer`'s chunks and choices; model cards and embeddings lists. Pure: no I/O."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any

from gateway.errors import GatewayError
from gateway.protocol.answer import Answer, Choice, Chunk, Ended, Logprobs, Opened, Reasoning, Text, ToolDelta, Usage

DONE = "[DONE]"  # the last `data:` payload of an OpenAI stream


def usage(counts: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.total_tokens,
    }
    if counts.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": counts.reasoning_tokens}
    if counts.cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": counts.cached_tokens}
    return body


class _Responder(ABC):
    object_name = ""
    id_prefix = ""

    def __init__(self, model: str, service_tier: str | None = None) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.service_tier = service_tier  # echoed when the request named one: the tier it ran at

    def _tier(self) -> dict[str, str]:
        return {"service_tier": self.service_tier} if self.service_tier else {}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **self._tier(),
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def render(self, chunk: Chunk, include_usage: bool = True) -> list[dict[str, Any]]:
        """A chunk as OpenAI's stream chunks (the usage only when the client asked for it)."""
        if isinstance(chunk, Opened):
            return self.begin_chunks(chunk.index, chunk.tool_call)
        if isinstance(chunk, Text):
            return [self.text_chunk(chunk.index, chunk.text, chunk.logprobs)]
        if isinstance(chunk, ToolDelta):
            return [self.tool_chunk(chunk.index, chunk.delta)]
        if isinstance(chunk, Reasoning):
            return [self.reasoning_chunk(chunk.index, chunk.text)]
        if isinstance(chunk, Ended):
            return [self.finish_chunk(chunk.index, chunk.finish_reason)]
        return [self._chunk([], usage(chunk))] if include_usage else []

    @abstractmethod
    def begin_chunks(self, index: int, tool_call: bool) -> list[dict[str, Any]]: ...

    @abstractmethod
    def text_chunk(self, index: int, text: str, logprobs: Logprobs | None = None) -> dict[str, Any]: ...

    @abstractmethod
    def tool_chunk(self, index: int, tool_delta: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def finish_chunk(self, index: int, finish_reason: str) -> dict[str, Any]: ...

    def reasoning_chunk(self, index: int, text: str) -> dict[str, Any]:
        raise AssertionError("only chat answers have reasoning")


class ChatResponder(_Responder):
    """Builds the response body or stream chunks for one chat completion."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, model: str, reasoning_field: str = "reasoning_content", service_tier: str | None = None) -> None:
        super().__init__(model, service_tier)
        # `gateway.reasoning_field`: most clients read reasoning_content, vLLM >= 0.16's reasoning
        self._reasoning_fields = ("reasoning_content", "reasoning") if reasoning_field == "both" else (reasoning_field,)

    def reasoning_chunk(self, index: int, text: str) -> dict[str, Any]:
        delta = dict.fromkeys(self._reasoning_fields, text)
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def begin_chunks(self, index: int, tool_call: bool) -> list[dict[str, Any]]:
        # OpenAI opens a tool-call answer with content null, a text answer with "".
        delta = {"role": "assistant", "content": None if tool_call else ""}
        return [self._chunk([{"index": index, "delta": delta, "finish_reason": None}])]

    def text_chunk(self, index: int, text: str, logprobs: Logprobs | None = None) -> dict[str, Any]:
        choice = {
            "index": index,
            "delta": {"content": text},
            "logprobs": _chat_logprobs(logprobs),
            "finish_reason": None,
        }
        return self._chunk([choice])

    def tool_chunk(self, index: int, tool_delta: dict[str, Any]) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta": {"tool_calls": [tool_delta]}, "finish_reason": None}])

    def finish_chunk(self, index: int, finish_reason: str) -> dict[str, Any]:
        return self._chunk([{"index": index, "delta": {}, "finish_reason": finish_reason}])

    def _message(self, choice: Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
        if choice.reasoning is not None:
            message.update(dict.fromkeys(self._reasoning_fields, choice.reasoning))
        if choice.tool_calls:
            message["tool_calls"] = choice.tool_calls
        return message

    def completion(self, answer: Answer) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": self._message(c),
                    "logprobs": _chat_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(answer.choices)
            ],
            "usage": usage(answer.usage),
            **self._tier(),
        }


class CompletionResponder(_Responder):
    """Builds the response body or stream chunks for a legacy text completion (one choice per prompt)."""

    object_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, model: str, echo: tuple[str, ...] | None = None, service_tier: str | None = None) -> None:
        super().__init__(model, service_tier)
        self.echo = echo  # per choice, the prompt to send back first, when the client asked for it

    def begin_chunks(self, index: int, tool_call: bool) -> list[dict[str, Any]]:
        return [self.text_chunk(index, self.echo[index])] if self.echo and self.echo[index] else []

    def text_chunk(self, index: int, text: str, logprobs: Logprobs | None = None) -> dict[str, Any]:
        choice = {"text": text, "index": index, "logprobs": _legacy_logprobs(logprobs), "finish_reason": None}
        return self._chunk([choice])

    def finish_chunk(self, index: int, finish_reason: str) -> dict[str, Any]:
        return self._chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": finish_reason}])

    def tool_chunk(self, index: int, tool_delta: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("text completions have no tool calls")

    def completion(self, answer: Answer) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "text": (self.echo[i] if self.echo else "") + (c.text or ""),
                    "index": i,
                    "logprobs": _legacy_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(answer.choices)
            ],
            "usage": usage(answer.usage),
            **self._tier(),
        }


# A frame of OpenAI's stream: no `event:` name, a `data:` payload (a chunk, an error, or DONE).
Frame = tuple[None, dict[str, Any] | str]


class StreamEvents:
    """OpenAI's stream of one answer: its chunks as `data:` payloads (the usage when asked for), a
    failure after the 200 in-band as `data: {"error": ...}`, then `data: [DONE]`."""

    def __init__(self, responder: ChatResponder | CompletionResponder, include_usage: bool) -> None:
        self._responder = responder
        self._include_usage = include_usage

    def start(self) -> list[Frame]:
        return []

    def chunk(self, chunk: Chunk) -> list[Frame]:
        return [(None, c) for c in self._responder.render(chunk, self._include_usage)]

    def error(self, exc: GatewayError) -> list[Frame]:
        return [(None, exc.body()), (None, DONE)]

    def end(self) -> list[Frame]:
        return [(None, DONE)]


def _chat_logprobs(entries: Logprobs | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def _legacy_logprobs(entries: Logprobs | None) -> dict[str, Any] | None:
    """The completions endpoint's older shape: parallel lists, alternatives as {token: logprob}."""
    if entries is None:
        return None
    offsets, offset = [], 0
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
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


def embeddings_list(model: str, vectors: list[list[float]], tokens: int, encoding: str) -> dict[str, Any]:
    """The embeddings list; base64 is the little-endian float32 bytes, as OpenAI sends them."""

    def encode(vector: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        return vector

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
