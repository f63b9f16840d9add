"""Chat completion results → OpenAI Responses objects and stream events. Pure: no I/O."""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.dialects.responses_request import ResponsesRequest
from gateway.errors import GatewayError

Event = dict[str, Any]  # a stream event: its `type` is also the SSE `event:` name


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _tool_choice(request: ResponsesRequest) -> Any:
    choice = request.tool_choice
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else {"type": "function", "name": choice.name}


def _text_config(request: ResponsesRequest) -> dict[str, Any]:
    fmt = request.text.format if request.text else None
    if fmt is None:
        return {"format": {"type": "text"}}
    return {"format": fmt.model_dump(by_alias=True, exclude_none=True)}


def skeleton(request: ResponsesRequest, model: str, response_id: str | None = None) -> dict[str, Any]:
    """A response before any output: what the request asked for, echoed as OpenAI does."""
    return {
        "id": response_id or new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.store is not False,
        "temperature": request.temperature,
        "text": _text_config(request),
        "tool_choice": _tool_choice(request),
        "tools": [t.model_dump(exclude_none=False) for t in request.tools or []],
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def finish(response: dict[str, Any], finish_reason: str, prompt_tokens: int, completion_tokens: int) -> None:
    """Status, incomplete details and usage once the answer has ended."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["usage"] = usage(prompt_tokens, completion_tokens)


def response(base: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed chat.completion as a finished Response."""
    choice = completion["choices"][0]
    answer = choice["message"]
    output: list[dict[str, Any]] = []
    if answer.get("tool_calls"):
        for call in answer["tool_calls"]:
            fn = call["function"]
            output.append(call_item(new_id("fc"), call["id"], fn["name"], fn["arguments"]))
    else:
        output.append(message_item(new_id("msg"), answer.get("content") or ""))
    result = {**base, "output": output}
    finish(
        result, choice["finish_reason"], completion["usage"]["prompt_tokens"], completion["usage"]["completion_tokens"]
    )
    return result


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output as the chat turn it adds to a stored conversation."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    calls = [
        {"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in output
        if i["type"] == "function_call"
    ]
    return [{"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}]


class ResponseEvents:
    """Turns a chat chunk stream into the Responses event sequence, numbered by `sequence_number`:
    response.created, response.in_progress, then per output item output_item.added, its content part
    or argument deltas and their done events, output_item.done, and response.completed (or
    response.incomplete when cut by max_output_tokens)."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.response = base
        self._sequence = 0
        self._item: dict[str, Any] | None = None  # the output item being streamed
        self._parts: list[str] = []  # its text or arguments so far
        self._finish_reason = "stop"
        self._usage = (0, 0)

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response={**self.response}),
            self._event("response.in_progress", response={**self.response}),
        ]

    def chunk(self, chunk: dict[str, Any]) -> list[Event]:
        if not chunk["choices"]:
            found = chunk.get("usage") or {}
            self._usage = (found.get("prompt_tokens", 0), found.get("completion_tokens", 0))
            return []
        choice = chunk["choices"][0]
        delta = choice["delta"]
        events: list[Event] = []
        if delta.get("content"):
            if self._item is None or self._item["type"] != "message":
                events += self._open(message_item(new_id("msg"), "", "in_progress"))
            events.append(self._text_delta(delta["content"]))
        for call in delta.get("tool_calls") or []:
            if call.get("id"):
                events += self._open(call_item(new_id("fc"), call["id"], call["function"]["name"], "", "in_progress"))
            fragment = call.get("function", {}).get("arguments")
            if fragment and self._item is not None:
                self._parts.append(fragment)
                position = self._position()
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=self._item["id"],
                        output_index=position,
                        delta=fragment,
                    )
                )
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return events

    def end(self) -> list[Event]:
        events = self._close()
        if not self.response["output"]:  # an empty answer is still one (empty) message
            events += self._open(message_item(new_id("msg"), "", "in_progress"))
            events += self._close()
        finish(self.response, self._finish_reason, *self._usage)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        events.append(self._event(kind, response={**self.response}))
        return events

    def error(self, error: GatewayError) -> list[Event]:
        """A failure after the 200: an `error` event, then response.failed."""
        self.response["status"] = "failed"
        self.response["error"] = {"code": "server_error", "message": error.message}
        return [
            self._event("error", code=error.code, message=error.message, param=error.param),
            self._event("response.failed", response={**self.response}),
        ]

    def _position(self) -> int:
        return len(self.response["output"])

    def _open(self, item: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._item, self._parts = item, []
        events.append(self._event("response.output_item.added", output_index=self._position(), item=item))
        if item["type"] == "message":
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self._position(),
                    content_index=0,
                    part=_text_part(""),
                )
            )
        return events

    def _text_delta(self, text: str) -> Event:
        assert self._item is not None
        self._parts.append(text)
        return self._event(
            "response.output_text.delta",
            item_id=self._item["id"],
            output_index=self._position(),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close(self) -> list[Event]:
        item = self._item
        if item is None:
            return []
        self._item = None
        where = {"item_id": item["id"], "output_index": self._position()}
        joined = "".join(self._parts)
        events: list[Event]
        if item["type"] == "message":
            done = message_item(item["id"], joined)
            events = [
                self._event("response.output_text.done", **where, content_index=0, text=joined, logprobs=[]),
                self._event("response.content_part.done", **where, content_index=0, part=_text_part(joined)),
            ]
        else:
            done = call_item(item["id"], item["call_id"], item["name"], joined)
            events = [
                self._event("response.function_call_arguments.done", **where, name=item["name"], arguments=joined)
            ]
        events.append(self._event("response.output_item.done", output_index=self._position(), item=done))
        self.response["output"] = [*self.response["output"], done]
        return events
