"""Tool calls: the grammar that forces one, and turning generated text into OpenAI `tool_calls`.

- A named `tool_choice` constrains the output to that function's parameters: the text *is* the
  arguments, streamed as `arguments` fragments after one delta carrying id, type and name.
- `required` constrains the output to `{"name": <one of the tools>, "arguments": {...}}`; the name is
  announced as soon as it is complete, then the arguments stream.
- `auto` lets the model's own template present the tools; an answer that opens like a tool call
  (`<tool_call>`, `[TOOL_CALLS]`, or a JSON object) is held back and parsed at the end, anything else
  streams as text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from gateway import structured

# A piece of a shaped answer: ("content", text) or ("tool", a delta for one tool call).
Piece = tuple[str, Any]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parameters_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a tool's arguments (OpenAI's strict rules applied when it is `strict`)."""
    schema = tool["function"].get("parameters") or {"type": "object", "properties": {}}
    return structured.strict(schema) if tool["function"].get("strict") else schema


def forced_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The JSON schema a forced call must follow: the named function's parameters, or (required)
    a {"name", "arguments"} object for any of the tools."""
    if name is not None:
        (tool,) = [t for t in tools if t["function"]["name"] == name]
        return parameters_schema(tool)
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t["function"]["name"]}, "arguments": parameters_schema(t)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }


def forced_hint(tools: list[dict[str, Any]], name: str | None) -> str:
    """A system message telling the model which call it must make (its output is constrained anyway)."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    lines = ["Answer by calling " + ("this function" if name else "one of these functions") + " with JSON arguments."]
    for tool in chosen:
        fn = tool["function"]
        description = f": {fn['description']}" if fn.get("description") else ""
        lines.append(f"- {fn['name']}{description}. Parameters schema: {json.dumps(parameters_schema(tool))}")
    return "\n".join(lines)


class Shaper:
    """Plain text: everything is content."""

    def __init__(self) -> None:
        self.tool_calls: list[dict[str, Any]] = []
        self.content: list[str] = []

    @property
    def called(self) -> bool:
        return bool(self.tool_calls)

    def feed(self, text: str) -> list[Piece]:
        self.content.append(text)
        return [("content", text)] if text else []

    def finish(self) -> list[Piece]:
        return []

    def text(self) -> str | None:
        return None if self.called else "".join(self.content)


class NamedCall(Shaper):
    """The output is the arguments of one known function."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._id = new_call_id()
        self._name = name
        self._arguments: list[str] = []
        self.tool_calls = [_call(self._id, name, "")]

    def feed(self, text: str) -> list[Piece]:
        pieces: list[Piece] = []
        if not self._arguments:
            pieces.append(("tool", _opening(0, self._id, self._name)))
        self._arguments.append(text)
        self.tool_calls[0]["function"]["arguments"] = "".join(self._arguments)
        if text:
            pieces.append(("tool", _fragment(0, text)))
        return pieces

    def finish(self) -> list[Piece]:
        return [] if self._arguments else [("tool", _opening(0, self._id, self._name))]


_WRAPPER_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


_CUT_NAME = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)$')


class RequiredCall(Shaper):
    """The output is {"name": ..., "arguments": {...}} for one of the tools."""

    def __init__(self, names: set[str] | None = None) -> None:
        super().__init__()
        self._names = names or set()
        self._buffer = ""
        self._id = new_call_id()
        self._name: str | None = None
        self._sent = 0  # characters of the arguments already streamed

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        if self._name is None:
            match = _WRAPPER_HEAD.match(self._buffer)
            if match is None:
                return []
            self._name = json.loads(f'"{match.group(1)}"')
            self._buffer = self._buffer[match.end() :]
            pieces.append(("tool", _opening(0, self._id, self._name)))
        # Hold back a closing brace (and spaces) at the end: it may be the wrapper's, not the arguments'.
        stripped = self._buffer.rstrip()
        safe = len(stripped) - (1 if stripped.endswith("}") else 0)
        if safe > self._sent:
            pieces.append(("tool", _fragment(0, self._buffer[self._sent : safe])))
            self._sent = safe
        return pieces

    def finish(self) -> list[Piece]:
        pieces: list[Piece] = []
        if self._name is None:  # cut short (max_tokens) before the name was complete
            self._name = self._cut_name()
            if self._name is None:
                return []
            self._buffer = ""
            pieces.append(("tool", _opening(0, self._id, self._name)))
        arguments = _arguments_in(self._buffer.rstrip())
        self.tool_calls = [
            {"id": self._id, "type": "function", "function": {"name": self._name, "arguments": arguments}}
        ]
        if len(arguments) > self._sent:
            pieces.append(("tool", _fragment(0, arguments[self._sent :])))
        return pieces

    def _cut_name(self) -> str | None:
        """The one tool a name cut short can still be (a call cut by max_tokens is still a call)."""
        head = _CUT_NAME.match(self._buffer)
        if head is not None:
            begun = head.group(1)
        elif '{"name":"'.startswith(re.sub(r"\s+", "", self._buffer)):
            begun = ""
        else:
            return None
        known = [n for n in self._names if n.startswith(begun)]
        return known[0] if len(known) == 1 else None


def _arguments_in(text: str) -> str:
    """The arguments of a `{"name", "arguments"}` wrapper without its closing brace: a whole wrapper
    ends with one brace more than its arguments; an answer cut short (max_tokens) may end inside them."""
    if text.endswith("}"):
        try:
            json.loads(text[:-1])
        except ValueError:
            pass
        else:
            return text[:-1].rstrip()
    return text


_OPENERS = ("<tool_call>", "[TOOL_CALLS]", "{", "[{")


class AutoCall(Shaper):
    """The model may answer in text or call tools in its own format; only the known tool names count."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self._names = names
        self._held: list[str] | None = None  # the answer so far, while it may be a tool call
        self._decided = False

    def feed(self, text: str) -> list[Piece]:
        if self._decided:
            return super().feed(text)
        self._held = [*(self._held or []), text]
        so_far = "".join(self._held).lstrip()
        if not so_far:
            return []
        if any(so_far.startswith(o) or o.startswith(so_far) for o in _OPENERS):
            return []  # looks like (the start of) a tool call: decide at the end
        held = "".join(self._held)
        self._decided, self._held = True, None
        return super().feed(held)

    def finish(self) -> list[Piece]:
        if self._decided or self._held is None:
            return []
        text = "".join(self._held)
        calls = parse_tool_calls(text, self._names)
        if not calls:
            self._decided = True
            return super().feed(text)
        self.tool_calls = calls
        pieces: list[Piece] = []
        for index, call in enumerate(calls):
            pieces.append(("tool", _opening(index, call["id"], call["function"]["name"])))
            pieces.append(("tool", _fragment(index, call["function"]["arguments"])))
        return pieces


def parse_tool_calls(text: str, names: set[str]) -> list[dict[str, Any]]:
    """Tool calls in the common formats models write: <tool_call>{...}</tool_call> blocks (Hermes,
    Qwen), [TOOL_CALLS][...] (Mistral), or a bare JSON object or list of {"name", "arguments"|"parameters"}."""
    stripped = text.strip()
    candidates: list[Any] = []
    blocks = re.findall(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", stripped, flags=re.S)
    raw_items = blocks or [stripped.removeprefix("[TOOL_CALLS]").strip()]
    for raw in raw_items:
        try:
            value = json.loads(raw)
        except ValueError:
            return []
        candidates.extend(value if isinstance(value, list) else [value])
    calls = []
    for item in candidates:
        if not isinstance(item, dict) or item.get("name") not in names:
            return []
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                json.loads(arguments)
            except ValueError:
                return []
        else:
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(
            {"id": new_call_id(), "type": "function", "function": {"name": item["name"], "arguments": arguments}}
        )
    return calls


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _opening(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}


def _fragment(index: int, text: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": text}}
