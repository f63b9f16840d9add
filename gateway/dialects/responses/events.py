"""An answer's chunks (`protocol.answer`) → the OpenAI Responses stream events. Pure: no I/O; the
objects the events carry come from `reply.py`."""

from __future__ import annotations

from typing import Any

from gateway.dialects.responses.reply import (
    call_item,
    finish,
    item_status,
    message_item,
    output_item_id,
    reasoning_item,
    summary_part,
    text_part,
)
from gateway.errors import GatewayError
from gateway.protocol.answer import Chunk, Ended, Reasoning, Text, ToolDelta, Usage

Event = tuple[str, dict[str, Any]]  # a stream event with its SSE `event:` name, which is its `type`


class ResponseEvents:
    """Turns an answer's chunks into the Responses event sequence, numbered by `sequence_number`:
    response.created, response.in_progress, then per output item output_item.added, its content part
    or argument deltas and their done events, output_item.done, and response.completed (or
    response.incomplete when cut by max_output_tokens)."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.response = base
        self._sequence = 0
        self._item: dict[str, Any] | None = None  # the output item being streamed
        self._parts: list[str] = []  # its text or arguments so far
        self._finish_reason = "stop"
        self._usage = (0, 0, 0, 0)
        self._summary = base["reasoning"]["summary"] is not None  # reasoning items carry a summary

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return kind, event

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response={**self.response}),
            self._event("response.in_progress", response={**self.response}),
        ]

    def chunk(self, chunk: Chunk) -> list[Event]:
        events: list[Event] = []
        if isinstance(chunk, Reasoning) and chunk.text:
            if self._item is None or self._item["type"] != "reasoning":
                events += self._open(reasoning_item(self._item_id("reasoning"), "", self._summary, "in_progress"))
            assert self._item is not None
            self._parts.append(chunk.text)
            where = {"item_id": self._item["id"], "output_index": self._position()}
            events.append(self._event("response.reasoning_text.delta", **where, content_index=0, delta=chunk.text))
        elif isinstance(chunk, Text) and chunk.text:
            if self._item is None or self._item["type"] != "message":
                events += self._open(message_item(self._item_id("message"), "", "in_progress"))
            events.append(self._text_delta(chunk.text))
        elif isinstance(chunk, ToolDelta):
            call = chunk.delta
            if call.get("id"):
                item = call_item(
                    self._item_id("function_call"), call["id"], call["function"]["name"], "", "in_progress"
                )
                events += self._open(item)
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
        elif isinstance(chunk, Ended):
            self._finish_reason = chunk.finish_reason
        elif isinstance(chunk, Usage):
            self._usage = (chunk.prompt_tokens, chunk.completion_tokens, chunk.reasoning_tokens, chunk.cached_tokens)
        return events

    def end(self) -> list[Event]:
        events = self._close()
        if all(item["type"] == "reasoning" for item in self.response["output"]):  # an answer is one message
            events += self._open(message_item(self._item_id("message"), "", "in_progress"))
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

    def _item_id(self, kind: str) -> str:
        return output_item_id(self.response["id"], kind, self._position_after_close())

    def _position_after_close(self) -> int:
        """Where the next item goes: after the one still open, which is closed before it opens."""
        return len(self.response["output"]) + (1 if self._item is not None else 0)

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
                    part=text_part(""),
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
        status = item_status(self._finish_reason)  # known when the last item closes: the answer has ended
        events: list[Event]
        if item["type"] == "reasoning":
            done = reasoning_item(item["id"], joined, self._summary)
            events = [self._event("response.reasoning_text.done", **where, content_index=0, text=joined)]
            if self._summary:
                part = {**where, "summary_index": 0}
                events += [
                    self._event("response.reasoning_summary_part.added", **part, part=summary_part("")),
                    self._event("response.reasoning_summary_text.delta", **part, delta=joined),
                    self._event("response.reasoning_summary_text.done", **part, text=joined),
                    self._event("response.reasoning_summary_part.done", **part, part=summary_part(joined)),
                ]
        elif item["type"] == "message":
            done = message_item(item["id"], joined, status)
            events = [
                self._event("response.output_text.done", **where, content_index=0, text=joined, logprobs=[]),
                self._event("response.content_part.done", **where, content_index=0, part=text_part(joined)),
            ]
        else:
            done = call_item(item["id"], item["call_id"], item["name"], joined, status)
            events = [
                self._event("response.function_call_arguments.done", **where, name=item["name"], arguments=joined)
            ]
        events.append(self._event("response.output_item.done", output_index=self._position(), item=done))
        self.response["output"] = [*self.response["output"], done]
        return events
