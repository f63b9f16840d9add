"""Anthropic Messages requests (`POST /v1/messages`) → the internal chat completion request. The
content blocks of their turns: `content.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field

from gateway.dialects.anthropic import content
from gateway.dialects.anthropic.content import MessageParam, TextBlock, check_images
from gateway.dialects.common import Strict, load_json, refuse, validate
from gateway.errors import invalid_request
from gateway.protocol import ChatCompletionRequest
from gateway.protocol.reasoning import Ask


class ToolParam(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class JsonOutputFormat(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    format: JsonOutputFormat | None = None
    effort: Literal["low", "medium", "high", "max"] | None = None


class ThinkingConfig(Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=0)] | None = None
    display: str | None = None


class Metadata(Strict):
    user_id: str | None = None


class MessagesRequest(Strict):
    model: str = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)]
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingConfig | None = None

    @property
    def shows_thinking(self) -> bool:
        """Anthropic answers with thinking blocks only when thinking is on."""
        return self.thinking is not None and self.thinking.type != "disabled"

    def reasoning_ask(self) -> Ask:
        """`thinking` and `output_config.effort` as the chat's reasoning controls: absent or disabled
        switches thinking off where the template can (and otherwise closes the block at once)."""
        effort = self.output_config.effort if self.output_config else None
        level = "high" if effort == "max" else effort
        if not self.shows_thinking:
            if effort is None:
                return Ask(effort="none", param="thinking")
            return Ask(effort=level, param="output_config.effort", asked=True)
        budget = self.thinking.budget_tokens if self.thinking else None
        return Ask(effort=level or "high", budget=budget, param="thinking", asked=True)


class CountTokensRequest(Strict):
    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None  # accepted; the count is that of the template without it


_UNSUPPORTED_BLOCKS = {"document", "server_tool_use", "search_result"}
UNSUPPORTED = {
    "mcp_servers": "remote MCP servers are not available.",
    "container": "code execution containers are not available.",
}


def _check_blocks(data: dict[str, Any]) -> None:
    """Content and tools this gateway cannot serve get a 400 naming them, before field validation."""
    for i, message in enumerate(data.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and (kind in _UNSUPPORTED_BLOCKS or kind.endswith("_tool_result")):
                raise invalid_request(
                    f"'{kind}' content blocks are not supported by this gateway "
                    "(text, image, tool_use and tool_result are).",
                    param=f"messages[{i}].content[{j}].type",
                )
    for i, tool in enumerate(data.get("tools") or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise invalid_request(
                f"Server tool '{kind}' is not supported by this gateway; only custom tools (input_schema) are.",
                param=f"tools[{i}].type",
            )


def parse_messages_request(body: bytes) -> MessagesRequest:
    data = load_json(body)
    refuse(data, UNSUPPORTED)
    _check_blocks(data)
    return _checked(validate(MessagesRequest, data))


def parse_count_tokens_request(body: bytes) -> CountTokensRequest:
    data = load_json(body)
    _check_blocks(data)
    return _checked(validate(CountTokensRequest, data))


Checked = TypeVar("Checked", MessagesRequest, CountTokensRequest)


def _checked(request: Checked) -> Checked:
    check_images(request.messages)
    choice: ToolChoice | None = request.tool_choice
    if choice is not None and choice.type == "tool":
        names = {t.name for t in request.tools or []}
        if choice.name not in names:
            raise invalid_request(f"tool_choice names '{choice.name}', which is not in 'tools'.", "tool_choice.name")
    if choice is not None and choice.type in ("any", "tool") and not request.tools:
        raise invalid_request(f"tool_choice '{choice.type}' needs 'tools'.", "tool_choice")
    return request


def chat_messages(request: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    return content.chat_messages(request.system, request.messages)


def _tools(request: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    if not request.tools:
        return {}
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "parameters": t.input_schema}
            | ({"description": t.description} if t.description else {}),
        }
        for t in request.tools
    ]
    choice: Any = "auto"
    if request.tool_choice is not None:
        kind = request.tool_choice.type
        choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {
            "type": "function",
            "function": {"name": request.tool_choice.name},
        }
    return {"tools": tools, "tool_choice": choice}


def to_chat(request: MessagesRequest) -> ChatCompletionRequest:
    chat: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request),
        "max_tokens": request.max_tokens,
        "stream": bool(request.stream),
        **_tools(request),
    }
    if request.stream:
        chat["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p", "top_k"):
        if getattr(request, name) is not None:
            chat[name] = getattr(request, name)
    if request.stop_sequences:
        chat["stop"] = request.stop_sequences
    output = request.output_config.format if request.output_config else None
    if output is not None:  # structured outputs: enforced by the same grammar as response_format
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": output.schema_}}
    if request.metadata is not None and request.metadata.user_id:
        chat["user"] = request.metadata.user_id
    return validate(ChatCompletionRequest, chat)


def count_chat(request: CountTokensRequest) -> ChatCompletionRequest:
    """The chat whose prompt count_tokens measures (rendered as a generation of it would be)."""
    chat = {"model": request.model, "messages": chat_messages(request), "max_tokens": 1, **_tools(request)}
    return validate(ChatCompletionRequest, chat)
