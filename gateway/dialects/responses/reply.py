"""Answers (`protocol.answer`) → OpenAI Responses objects: the response, its output items and usage.
Pure: no I/O. The stream events built from the same pieces: `events.py`."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from gateway.dialects.responses.request import ResponsesRequest
from gateway.protocol.answer import Answer


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_item_id(response_id: str, kind: str, index: int) -> str:
    """An output item's id names its response and place, so that an `item_reference` to it (the AI
    SDK sends them for stored responses) is found without an index of every item."""
    prefix = {"function_call": "fc", "reasoning": "rs"}.get(kind, "msg")
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def item_place(item_id: str) -> tuple[str, int] | None:
    """The response id and output index an output item's id names (None: not an output item's)."""
    match = re.fullmatch(r"(?:fc|msg|rs)_([0-9a-f]+)_([0-9]+)", item_id)
    return None if match is None else (f"resp_{match.group(1)}", int(match.group(2)))


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
        "reasoning": {"effort": request.reasoning.effort if request.reasoning else None, "summary": request.summary},
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


def usage(
    prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0, cached_tokens: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """A message item; "in_progress" is the one a stream opens, before its content part."""
    content = [] if status == "in_progress" else [text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(item_id: str, text: str, summary: bool, status: str = "completed") -> dict[str, Any]:
    """A reasoning model's thinking: its text as `reasoning_text` content; the summary, when asked
    for, is the same text (no second model writes a shorter one)."""
    done = status == "completed"
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [summary_part(text)] if summary and done else [],
        "content": [{"type": "reasoning_text", "text": text}] if done else [],
        "status": status,
    }


def summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def item_status(finish_reason: str) -> str:
    """The status of an answer's items: the last one of an answer cut by max_output_tokens is incomplete."""
    return "incomplete" if finish_reason == "length" else "completed"


def finish(
    response: dict[str, Any],
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int = 0,
    cached_tokens: int = 0,
) -> None:
    """Status, incomplete details and usage once the answer has ended."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["usage"] = usage(prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens)


def response(base: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """A non-streamed answer as a finished Response."""
    choice = answer.choices[0]
    status = item_status(choice.finish_reason)
    output: list[dict[str, Any]] = []
    if choice.reasoning:
        item_id = output_item_id(base["id"], "reasoning", 0)
        output.append(reasoning_item(item_id, choice.reasoning, base["reasoning"]["summary"] is not None))
    if choice.tool_calls:
        for call in choice.tool_calls:
            fn = call["function"]
            item_id = output_item_id(base["id"], "function_call", len(output))
            output.append(call_item(item_id, call["id"], fn["name"], fn["arguments"], status))
    else:
        output.append(message_item(output_item_id(base["id"], "message", len(output)), choice.text or "", status))
    result = {**base, "output": output}
    usage = answer.usage
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens)
    finish(result, choice.finish_reason, *counts)
    return result


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output as the chat turn it adds to a stored conversation."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    calls = [
        {"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in output
        if i["type"] == "function_call"
    ]
    thinking = "".join(p["text"] for item in output if item["type"] == "reasoning" for p in item["content"])
    turn: dict[str, Any] = {"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}
    return [turn | ({"reasoning_content": thinking} if thinking else {})]
