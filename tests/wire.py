"""OpenAI wire shapes, checked twice: with the `openai` SDK's own pydantic types (`model_validate`), and
with strict checks of what those lenient types let through: every required key present, no key
OpenAI does not define, and null where OpenAI sends null. The keys are transcribed from OpenAI's
OpenAPI description (CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
CreateCompletionResponse, CreateEmbeddingResponse, Model, ErrorResponse); nothing is read from
outside the repository at test time."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from typing import Any

from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
# The gateway's documented additions to a model card (/v1/models): Open WebUI's status, memory (in all
# and per memory pool, with where it is placed), aliases, tool format, what it can do (and how it reasons).
MODEL_EXTENSIONS = {
    "status", "memory_bytes", "memory_pools", "placement", "aliases", "tool_template", "capabilities", "reasoning",
}  # fmt: skip


def keys(obj: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    assert isinstance(obj, dict), f"{where}: expected an object, got {type(obj).__name__}"
    required, allowed = set(required), set(required) | set(optional)
    assert required <= obj.keys(), f"{where}: missing {sorted(required - obj.keys())}"
    assert obj.keys() <= allowed, f"{where}: keys OpenAI does not define: {sorted(obj.keys() - allowed)}"
    return obj


def _of(value: Any, where: str, *types: type) -> None:
    assert isinstance(value, types) and not (isinstance(value, bool) and bool not in types), (
        f"{where}: {value!r} is not {'/'.join(t.__name__ for t in types)}"
    )


def _header(body: dict[str, Any], where: str, object_name: str, optional: Iterable[str]) -> None:
    keys(body, where, {"id", "object", "created", "model", "choices"}, optional)
    assert body["object"] == object_name, f"{where}.object: {body['object']!r}"
    _of(body["id"], f"{where}.id", str)
    _of(body["created"], f"{where}.created", int)
    _of(body["model"], f"{where}.model", str)
    _of(body["choices"], f"{where}.choices", list)


def usage(value: Any, where: str) -> None:
    keys(
        value,
        where,
        {"prompt_tokens", "completion_tokens", "total_tokens"},
        {"completion_tokens_details", "prompt_tokens_details"},
    )
    assert value["total_tokens"] == value["prompt_tokens"] + value["completion_tokens"], where


def _token_logprob(entry: Any, where: str) -> None:
    keys(entry, where, {"token", "logprob", "bytes", "top_logprobs"})
    for i, top in enumerate(entry["top_logprobs"]):
        keys(top, f"{where}.top_logprobs[{i}]", {"token", "logprob", "bytes"})


def _chat_logprobs(value: Any, where: str) -> None:
    if value is None:
        return
    keys(value, where, {"content", "refusal"})
    assert value["refusal"] is None, f"{where}.refusal"
    for i, entry in enumerate(value["content"] or []):
        _token_logprob(entry, f"{where}.content[{i}]")


def chat_completion(body: Any) -> None:
    ChatCompletion.model_validate(body)
    _header(body, "chat.completion", "chat.completion", {"usage", "system_fingerprint", "service_tier"})
    for i, choice in enumerate(body["choices"]):
        where = f"choices[{i}]"
        keys(choice, where, {"index", "message", "logprobs", "finish_reason"})
        assert choice["finish_reason"] in FINISH_REASONS, f"{where}.finish_reason"
        message = keys(
            choice["message"], f"{where}.message", {"role", "content", "refusal"}, {"tool_calls", "annotations"}
        )
        assert message["role"] == "assistant" and message["refusal"] is None
        _of(message["content"], f"{where}.message.content", str, type(None))
        for j, call in enumerate(message.get("tool_calls") or []):
            keys(call, f"{where}.message.tool_calls[{j}]", {"id", "type", "function"})
            keys(call["function"], f"{where}.message.tool_calls[{j}].function", {"name", "arguments"})
        _chat_logprobs(choice["logprobs"], f"{where}.logprobs")
    if "usage" in body:
        usage(body["usage"], "usage")


def chat_chunk(chunk: Any) -> None:
    ChatCompletionChunk.model_validate(chunk)
    _header(chunk, "chunk", "chat.completion.chunk", {"usage", "system_fingerprint", "service_tier", "obfuscation"})
    for i, choice in enumerate(chunk["choices"]):
        where = f"chunk.choices[{i}]"
        keys(choice, where, {"index", "delta", "finish_reason"}, {"logprobs"})
        assert choice["finish_reason"] is None or choice["finish_reason"] in FINISH_REASONS, where
        delta = keys(choice["delta"], f"{where}.delta", (), {"role", "content", "tool_calls", "refusal"})
        for j, call in enumerate(delta.get("tool_calls") or []):
            keys(call, f"{where}.delta.tool_calls[{j}]", {"index"}, {"id", "type", "function"})
            keys(call.get("function", {}), f"{where}.delta.tool_calls[{j}].function", (), {"name", "arguments"})
        _chat_logprobs(choice.get("logprobs"), f"{where}.logprobs")
    if chunk.get("usage") is not None:
        assert chunk["choices"] == [], "usage comes in its own chunk with no choices"
        usage(chunk["usage"], "chunk.usage")


def completion(body: Any, *, streamed: bool = False) -> None:
    """A text completion; stream chunks share its shape, with finish_reason null until the last."""
    # The SDK's type is the finished object's: its Literal has no null, which OpenAI streams until the end.
    finished = [{**c, "finish_reason": c.get("finish_reason") or "stop"} for c in body.get("choices", [])]
    Completion.model_validate({**body, "choices": finished} if streamed else body)
    _header(body, "text_completion", "text_completion", {"usage", "system_fingerprint"})
    for i, choice in enumerate(body["choices"]):
        where = f"choices[{i}]"
        keys(choice, where, {"text", "index", "logprobs", "finish_reason"})
        reasons = {"stop", "length", "content_filter"} | ({None} if streamed else set())
        assert choice["finish_reason"] in reasons, f"{where}.finish_reason: {choice['finish_reason']!r}"
        if choice["logprobs"] is not None:
            keys(
                choice["logprobs"], f"{where}.logprobs", (), {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
            )
    if body.get("usage") is not None:
        usage(body["usage"], "usage")


def embeddings(body: Any) -> None:
    # base64 vectors are little-endian float32 bytes; the SDK decodes them before its type sees them.
    decoded = [
        {**item, "embedding": _floats(item["embedding"])} if isinstance(item.get("embedding"), str) else item
        for item in body.get("data", [])
    ]
    CreateEmbeddingResponse.model_validate({**body, "data": decoded})
    keys(body, "embeddings", {"object", "model", "data", "usage"})
    assert body["object"] == "list"
    for i, item in enumerate(body["data"]):
        keys(item, f"data[{i}]", {"index", "object", "embedding"})
        assert item["object"] == "embedding" and item["index"] == i
    keys(body["usage"], "usage", {"prompt_tokens", "total_tokens"})


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def model_card(card: Any) -> None:
    Model.model_validate(card)
    keys(card, "model", {"id", "object", "created", "owned_by"}, MODEL_EXTENSIONS)
    assert card["object"] == "model"


def model_list(body: Any) -> None:
    keys(body, "list", {"object", "data"})
    assert body["object"] == "list"
    for card in body["data"]:
        model_card(card)


def error(body: Any) -> dict[str, Any]:
    """An error body, `{"error": {"message", "type", "param", "code"}}`; returns the inner object."""
    keys(body, "error body", {"error"})
    inner = keys(body["error"], "error", {"message", "type", "param", "code"})
    _of(inner["message"], "error.message", str)
    _of(inner["type"], "error.type", str)
    _of(inner["param"], "error.param", str, type(None))
    _of(inner["code"], "error.code", str, type(None))
    return inner
