"""Tools for chat templates that have no place for them (SmolLM2, Gemma 3, llama-cpp-python's named
formats): the tools go into the system message as a generic tool prompt, past calls and their results
become plain turns, and `tools.AutoCall` reads a bare `{"name", "arguments"}` answer back as a call.
llama-server's "generic" tool format is the precedent. Pure and stdlib-only (the worker imports it).
"""

from __future__ import annotations

import json
import re
from typing import Any

_TOOLS_IN_TEMPLATE = re.compile(r"\btools\b")


def native_tools(chat_format: str | None, template: str | None) -> bool:
    """Whether a model presents tools with its own chat template: a GGUF Jinja template that reads the
    `tools` it is given (llama-cpp-python's named formats never do)."""
    return chat_format is None and template is not None and _TOOLS_IN_TEMPLATE.search(template) is not None


def generic_tool_prompt(tools: list[dict[str, Any]]) -> str:
    lines = ["You can call these functions. Each is listed with the JSON schema of its arguments:"]
    for tool in tools:
        fn = tool["function"]
        description = f" - {fn['description']}" if fn.get("description") else ""
        parameters = fn.get("parameters") or {"type": "object", "properties": {}}
        lines.append(f"- {fn['name']}{description}. Arguments: {json.dumps(parameters, ensure_ascii=False)}")
    lines.append(
        "To call a function, answer with only this JSON object and nothing else: "
        '{"name": "<function name>", "arguments": {<the arguments>}}. '
        "Otherwise answer the user directly in plain text."
    )
    return "\n".join(lines)


def _as_text(message: dict[str, Any]) -> dict[str, Any]:
    """One turn with tool calls or a tool result, rewritten as plain text the template can show."""
    if message["role"] == "tool":
        name = f" {message['name']}" if message.get("name") else ""
        content = f"Result of the function call{name} ({message.get('tool_call_id', '')}): {message['content']}"
        return {"role": "user", "content": content}
    calls = [
        json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])})
        for c in message.get("tool_calls") or []
    ]
    text = "\n".join([message["content"], *calls] if message.get("content") else calls)
    return {"role": message["role"], "content": text}


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def generic_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The chat for a template without tool support: tool turns as text, the tool prompt (when tools
    are offered) at the end of the system message, or as a system message of its own."""
    out = [_as_text(m) if m["role"] == "tool" or m.get("tool_calls") else m for m in messages]
    if not tools:
        return out
    prompt = generic_tool_prompt(tools)
    if out and out[0]["role"] == "system":
        first = out[0]
        return [{**first, "content": f"{first['content']}\n\n{prompt}" if first["content"] else prompt}, *out[1:]]
    return [{"role": "system", "content": prompt}, *out]
