"""Tools for chat templates that have no place for them (SmolLM2, Gemma 3, llama-cpp-python's named
formats), after llama-server's "generic" tool format: the tools go into the system message, the
answer is constrained to `{"tool_call": {"name", "arguments"}}` or `{"response": "..."}`, and
`GenericReply` streams a response's text as it comes and reads a call back. Past calls and their
results become plain turns. Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.serving.tools.calls import Piece, Shaper, new_call_id, parameters_schema

_TOOLS_IN_TEMPLATE = re.compile(r"\btools\b")


def template_presents_tools(chat_format: str | None, template: str | None) -> bool:
    """Whether a model presents tools with its own chat template: a GGUF Jinja template that reads the
    `tools` it is given (llama-cpp-python's named formats never do)."""
    return chat_format is None and template is not None and _TOOLS_IN_TEMPLATE.search(template) is not None


def generic_tool_prompt(tools: list[dict[str, Any]]) -> str:
    lines = ["You can call these functions. Each is listed with the JSON schema of its arguments:"]
    for tool in tools:
        fn = tool["function"]
        description = f" - {fn['description']}" if fn.get("description") else ""
        lines.append(
            f"- {fn['name']}{description}. Arguments: {json.dumps(parameters_schema(tool), ensure_ascii=False)}"
        )
    lines.append(
        'Answer with a JSON object: {"tool_call": {"name": "<function name>", "arguments": {...}}} to call a '
        'function, or {"response": "<your answer>"} to answer the user directly.'
    )
    return "\n".join(lines)


RESPONSE_ONLY_PROMPT = 'Answer the user directly with a JSON object: {"response": "<your answer>"}.'


def _only(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def generic_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """What a generic answer must be: one call of a known function, or a text response."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": parameters_schema(t)},
            "required": ["name", "arguments"],
            "additionalProperties": False,  # the constraint engine allows other keys unless told
        }
        for t in tools
    ]
    return {
        "anyOf": [
            _only({"tool_call": {"anyOf": calls}}),
            # Not empty: an empty response answers nothing (SmolLM2 chose `{"response": ""}` for 2 in 150 seeds).
            _only({"response": {"type": "string", "minLength": 1}}),
        ]
    }


def response_schema() -> dict[str, Any]:
    """A generic answer that calls nothing: the answer to a chat whose earlier calls are written in the
    generic format, when no call may be made now (the model would otherwise copy their JSON as text)."""
    return _only({"response": {"type": "string", "minLength": 1}})


def has_tool_turns(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _as_text(message: dict[str, Any]) -> dict[str, Any]:
    """One turn with tool calls or a tool result, rewritten as plain text the template can show."""
    if message["role"] == "tool":
        name = f" {message['name']}" if message.get("name") else ""
        content = f"Result of the function call{name} ({message.get('tool_call_id', '')}): {message['content']}"
        return {"role": "user", "content": content}
    calls = [
        json.dumps({"tool_call": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}})
        for c in message.get("tool_calls") or []
    ]
    text = "\n".join([message["content"], *calls] if message.get("content") else calls)
    return {"role": message["role"], "content": text}


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def generic_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, response_only: bool = False
) -> list[dict[str, Any]]:
    """The chat for a template without tool support: tool turns as text, the tool prompt (when tools
    are offered; `response_only`: the prompt of an answer that may call nothing) at the end of the
    system message, or as a system message of its own."""
    out = [_as_text(m) if m["role"] == "tool" or m.get("tool_calls") else m for m in messages]
    if not tools and not response_only:
        return out
    prompt = generic_tool_prompt(tools) if tools else RESPONSE_ONLY_PROMPT
    if out and out[0]["role"] == "system":
        first = out[0]
        return [{**first, "content": f"{first['content']}\n\n{prompt}" if first["content"] else prompt}, *out[1:]]
    return [{"role": "system", "content": prompt}, *out]


_RESPONSE_HEAD = re.compile(r'\s*\{\s*"response"\s*:\s*"')
_CALL_HEAD = re.compile(r'\s*\{\s*"tool_call"\s*:')
_HEADS = ('{"response":"', '{"tool_call":')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


class GenericReply(Shaper):
    """A generic answer: `{"response": "..."}` streams the string's text as content while it is
    generated; `{"tool_call": ...}` is held and becomes a tool call at the end. Anything else (the
    grammar allows nothing else, but a cut answer may be anything) is content."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self._names = names
        self._buffer = ""
        self._mode: str | None = None  # "response" | "call" | "text"
        self._position = 0  # in "response" mode: where the undecoded string text starts
        self._closed = False

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        if self._mode is None:
            self._decide()
        if self._mode == "response":
            return self._decode()
        if self._mode == "text":
            held, self._buffer = self._buffer, ""
            return super().feed(held)
        return []

    def _decide(self) -> None:
        response = _RESPONSE_HEAD.match(self._buffer)
        if response is not None:
            self._mode, self._position = "response", response.end()
        elif _CALL_HEAD.match(self._buffer):
            self._mode = "call"
        elif not any(h.startswith(re.sub(r"\s+", "", self._buffer)) for h in _HEADS):
            self._mode = "text"

    def _decode(self) -> list[Piece]:
        """The string's characters that are complete so far (an escape may be cut between pieces)."""
        out, text, i = [], self._buffer, self._position
        while i < len(text) and not self._closed:
            char = text[i]
            if char == '"':
                self._closed = True
            elif char != "\\":
                out.append(char)
            elif i + 1 >= len(text) or (text[i + 1] == "u" and i + 6 > len(text)):
                break
            elif text[i + 1] == "u":
                code = int(text[i + 2 : i + 6], 16)
                if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for its second half
                    if i + 12 > len(text):
                        break
                    code = 0x10000 + ((code - 0xD800) << 10) + (int(text[i + 8 : i + 12], 16) - 0xDC00)
                    i += 6
                out.append(chr(code))
                i += 5
            else:
                out.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                i += 1
            i += 1
        self._position = i
        return super().feed("".join(out))

    def finish(self) -> list[Piece]:
        if self._mode == "call":
            call = self._call()
            if call is not None:
                self.tool_calls = [call]
                opening = {
                    "index": 0,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                return [
                    ("tool", opening),
                    ("tool", {"index": 0, "function": {"arguments": call["function"]["arguments"]}}),
                ]
        if self._mode in (None, "call"):
            held, self._buffer = self._buffer, ""
            return super().feed(held)
        return []

    def _call(self) -> dict[str, Any] | None:
        try:
            call = json.loads(self._buffer)["tool_call"]
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError):
            return None
        if name not in self._names:
            return None
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": text}}
