"""Answers (`protocol.answer`) → Anthropic Messages responses: the message object, the exact stream
event sequence, and errors in Anthropic's shape. Pure: no I/O."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pydantic_core

from gateway.errors import GatewayError
from gateway.protocol.answer import Answer, Chunk, Ended, Reasoning, Text, ToolDelta, Usage

Event = tuple[str, dict[str, Any]]  # (event name, payload): `event:` and `data:` lines

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

# Anthropic's error types by status; 503 (no capacity now) is its 529 "overloaded".
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_status(error: GatewayError) -> int:
    return 529 if error.status == 503 else error.status


def error_body(error: GatewayError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's input; one cut short by max_tokens (the stop_reason says so) is what its partial JSON
    holds so far, as the SDK's stream accumulator reads the same `input_json_delta`s."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        try:
            value = pydantic_core.from_json(arguments, allow_partial="trailing-strings")
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def signature(thinking: str) -> str:
    """A thinking block's `signature`: clients send it back with the block; this gateway keeps no
    secret to sign with, so it is the text's digest (it tells a block apart, and is not checked)."""
    return base64.b64encode(hashlib.sha256(thinking.encode("utf-8")).digest()).decode("ascii")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def stop_fields(finish_reason: str, stop_sequence: str | None) -> dict[str, str | None]:
    """Anthropic's `stop_reason` and `stop_sequence` for how a choice ended (`stop_sequence`: the stop
    string that ended it, if one did)."""
    if finish_reason == "stop" and stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": stop_sequence}
    return {"stop_reason": STOP_REASONS.get(finish_reason, "end_turn"), "stop_sequence": None}


def message(answer: Answer, shows_thinking: bool = False) -> dict[str, Any]:
    """A non-streamed answer (one choice) as an Anthropic message: its thinking first, as a thinking
    block, when the request turned thinking on."""
    choice = answer.choices[0]
    content: list[dict[str, Any]] = []
    if shows_thinking and choice.reasoning:
        content.append({"type": "thinking", "thinking": choice.reasoning, "signature": signature(choice.reasoning)})
    if choice.text:
        content.append({"type": "text", "text": choice.text})
    for call in choice.tool_calls or []:
        function = call["function"]
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _tool_input(function["arguments"]),
            }
        )
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": answer.model,
        **stop_fields(choice.finish_reason, choice.stop_sequence),
        "usage": _usage(answer.usage.prompt_tokens, answer.usage.completion_tokens),
    }


class MessageEvents:
    """Turns an answer's chunks into Anthropic's events: message_start, then per content block
    content_block_start, (ping after the first), content_block_delta..., content_block_stop, then
    message_delta (stop_reason, usage) and message_stop."""

    def __init__(self, model: str, prompt_tokens: int, shows_thinking: bool = False) -> None:
        self._shows_thinking = shows_thinking
        self._thinking: list[str] = []  # the open thinking block's text, for its signature
        self._model = model
        self._prompt_tokens = prompt_tokens
        self._stop_sequence: str | None = None
        self._blocks = 0  # content blocks opened so far
        self._open: str | None = None  # kind of the open block: "text" | "tool_use"
        self._pinged = False
        self._finish_reason = "stop"
        self._output_tokens = 0

    def start(self) -> list[Event]:
        body: dict[str, Any] = {
            "id": new_message_id(),
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self._prompt_tokens, 0),
        }
        return [("message_start", {"type": "message_start", "message": body})]

    def chunk(self, chunk: Chunk) -> list[Event]:
        events: list[Event] = []
        if isinstance(chunk, Reasoning) and chunk.text and self._shows_thinking:
            if self._open != "thinking":
                events += self._begin({"type": "thinking", "thinking": "", "signature": ""}, "thinking")
            self._thinking.append(chunk.text)
            events.append(self._delta({"type": "thinking_delta", "thinking": chunk.text}))
        elif isinstance(chunk, Text) and chunk.text:
            if self._open != "text":
                events += self._begin({"type": "text", "text": ""}, "text")
            events.append(self._delta({"type": "text_delta", "text": chunk.text}))
        elif isinstance(chunk, ToolDelta):
            call = chunk.delta
            if call.get("id"):
                block = {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}
                events += self._begin(block, "tool_use")
            fragment = call.get("function", {}).get("arguments")
            if fragment:
                events.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))
        elif isinstance(chunk, Ended):
            self._finish_reason, self._stop_sequence = chunk.finish_reason, chunk.stop_sequence
        elif isinstance(chunk, Usage):
            self._output_tokens = chunk.completion_tokens
        return events

    def end(self) -> list[Event]:
        events = self._close()
        if not self._pinged:
            events.append(("ping", {"type": "ping"}))
        usage = {"output_tokens": self._output_tokens}
        delta = stop_fields(self._finish_reason, self._stop_sequence)
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    @staticmethod
    def error(error: GatewayError) -> list[Event]:
        return [("error", error_body(error))]

    def _begin(self, block: dict[str, Any], kind: str) -> list[Event]:
        events = self._close()
        self._open = kind
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": self._blocks, "content_block": block})
        )
        self._blocks += 1
        if not self._pinged:
            self._pinged = True
            events.append(("ping", {"type": "ping"}))
        return events

    def _delta(self, delta: dict[str, Any]) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta}

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        if self._open == "thinking":  # the signature comes last, as Anthropic sends it
            events.append(self._delta({"type": "signature_delta", "signature": signature("".join(self._thinking))}))
            self._thinking = []
        self._open = None
        return [*events, ("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})]
