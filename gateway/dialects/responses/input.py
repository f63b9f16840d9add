"""The input items of an OpenAI Responses request (messages, function calls and their outputs,
reasoning sent back): parsed and checked, then turned into chat messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gateway.dialects.common import Strict, validate
from gateway.errors import invalid_request
from gateway.images.source import check_count, check_source

MessageRole = Literal["user", "system", "developer", "assistant"]


class TextPart(Strict):
    type: Literal["input_text", "output_text"]
    text: str


class InputImagePart(Strict):
    type: Literal["input_image"]
    image_url: str | None = None  # a base64 data URL, or an http(s) URL the operator allows
    file_id: str | None = None  # refused: this gateway has no Files API
    detail: Literal["auto", "low", "high"] | None = None


class MessageItem(Strict):
    type: Literal["message"] | None = None
    role: MessageRole
    content: str | list[Annotated[TextPart | InputImagePart, Field(discriminator="type")]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def chat_content(self) -> str | list[dict[str, Any]]:
        """The content as a chat message's: text, or text and image parts in their order."""
        if isinstance(self.content, str) or not any(isinstance(p, InputImagePart) for p in self.content):
            return self.text()
        return [
            {"type": "text", "text": p.text}
            if isinstance(p, TextPart)
            else {"type": "image_url", "image_url": {"url": p.image_url or ""}}
            for p in self.content
        ]


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[TextPart]

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


class ReasoningText(Strict):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(Strict):
    """A reasoning output item sent back: its text goes to the next assistant turn's thinking."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None

    def text(self) -> str:
        return "".join(p.text for p in self.content or self.summary)


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem
_ITEMS: dict[str | None, type[Item]] = {
    None: MessageItem,
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}

_CONTENT_PARTS = {"input_text", "output_text", "input_image"}


def check_items(raw: list[Any], param: str = "input") -> None:
    """Items as input items are checked: message, function_call or function_call_output, text only."""
    for index, item in enumerate(raw):
        parse_item(index, item, param)


def parse_item(index: int, raw: Any, field: str = "input") -> Item:
    param = f"{field}[{index}]"
    if not isinstance(raw, dict):
        raise invalid_request(f"Invalid value for '{param}': should be an object.", param=param)
    kind = raw.get("type")
    cls = _ITEMS.get(kind) if isinstance(kind, str) or kind is None else None
    if cls is None:
        raise invalid_request(
            f"Input items of type '{kind}' are not supported by this gateway "
            "(message, function_call, function_call_output and reasoning are).",
            param=f"{param}.type",
        )
    content = raw.get("content") if cls is MessageItem else raw.get("output") if cls is not ReasoningItem else None
    for j, part in enumerate(content if isinstance(content, list) else []):
        part_type = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part_type, str) or part_type not in _CONTENT_PARTS:
            raise invalid_request(
                f"Content of type '{part_type}' is not supported by this gateway (text and input_image are).",
                param=f"{param}.content[{j}].type",
            )
    return validate(cls, raw, prefix=param)


def check_images(items: list[Item]) -> None:
    """Each input_image before the 200: a user turn's, within the count, an image_url that decodes."""
    count = 0
    for i, item in enumerate(items):
        if not isinstance(item, MessageItem) or isinstance(item.content, str):
            continue
        for j, part in enumerate(item.content):
            if not isinstance(part, InputImagePart):
                continue
            where = f"input[{i}].content[{j}]"
            if part.file_id is not None:
                raise invalid_request(
                    f"'{where}.file_id': this gateway has no Files API; send the image in 'image_url' "
                    "as a base64 data URL (data:image/png;base64,...).",
                    param=f"{where}.file_id",
                    code="unsupported_file_id",
                )
            if part.image_url is None:
                raise invalid_request(f"'{where}' needs 'image_url'.", param=f"{where}.image_url")
            if item.role != "user":
                raise invalid_request(f"'{where}': images can be sent in user messages only.", param=where)
            count += 1
            check_count(count, where)
            check_source(part.image_url, where)


def kept_messages(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept items (a conversation's) as chat messages."""
    return item_messages([parse_item(i, raw) for i, raw in enumerate(kept)])


def item_messages(items: list[Item]) -> list[dict[str, Any]]:
    """Input items as chat messages: consecutive function calls become one assistant turn's
    tool_calls, each function_call_output a `tool` message."""
    out: list[dict[str, Any]] = []
    thinking = ""  # a reasoning item's text, for the assistant turn that follows it
    for item in items:
        if isinstance(item, ReasoningItem):
            thinking += item.text()
            continue
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": item.chat_content()})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
        if thinking and out[-1]["role"] == "assistant":
            out[-1]["reasoning_content"], thinking = thinking, ""
    return out
