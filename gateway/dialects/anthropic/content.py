"""The content of Anthropic Messages turns: its blocks (text, images, tool use and results, thinking
sent back), the images checked before the 200, and the turns as OpenAI chat messages."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from gateway.dialects.common import Strict
from gateway.errors import invalid_request
from gateway.images.decode import check_media_type, decode_base64, decode_image
from gateway.images.source import check_count, check_source, data_url


class TextBlock(Strict):
    type: Literal["text"]
    text: str


class Base64Source(Strict):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(Strict):
    type: Literal["url"]
    url: str


class ImageBlock(Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]

    def url(self) -> str:
        """The image as the chat form carries it: a data URL, or the remote URL."""
        source = self.source
        return data_url(source.media_type, source.data) if isinstance(source, Base64Source) else source.url


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        body = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        return f"Error: {body}" if self.is_error else body


class ThinkingBlock(Strict):
    """A past turn's thinking sent back (its signature is the one this gateway gave it; not checked)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


def check_images(messages: list[MessageParam]) -> None:
    """Each image block before the 200: a user turn's, within the count, its data decoding."""
    count = 0
    for i, message in enumerate(messages):
        for j, block in enumerate(message.content if isinstance(message.content, list) else []):
            if not isinstance(block, ImageBlock):
                continue
            where = f"messages[{i}].content[{j}]"
            if message.role != "user":
                raise invalid_request(f"'{where}': images can be sent in user turns only.", param=where)
            count += 1
            check_count(count, where)
            if isinstance(block.source, Base64Source):
                check_media_type(block.source.media_type, f"{where}.source.media_type")
                decode_image(decode_base64(block.source.data, where), where)
            else:
                check_source(block.source.url, where)


def system_text(system: str | list[TextBlock] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    return "\n\n".join(b.text for b in system) or None


def chat_messages(system_field: str | list[TextBlock] | None, messages: list[MessageParam]) -> list[dict[str, Any]]:
    """Anthropic turns as OpenAI chat messages: tool_use blocks become an assistant turn's tool_calls,
    each tool_result block a `tool` message, answering in order before the user's text."""
    out: list[dict[str, Any]] = []
    system = system_text(system_field)
    if system:
        out.append({"role": "system", "content": system})
    for message in messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
        if message.role == "assistant":
            calls = [
                {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                for b in message.content
                if isinstance(b, ToolUseBlock)
            ]
            thinking = "".join(b.thinking for b in message.content if isinstance(b, ThinkingBlock))
            out.append(
                {"role": "assistant", "content": text or None}
                | ({"tool_calls": calls} if calls else {})
                | ({"reasoning_content": thinking} if thinking else {})
            )
            continue
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()})
        if any(isinstance(b, ImageBlock) for b in message.content):  # text and images, in their order
            parts = [
                {"type": "text", "text": b.text}
                if isinstance(b, TextBlock)
                else {"type": "image_url", "image_url": {"url": b.url()}}
                for b in message.content
                if isinstance(b, TextBlock | ImageBlock)
            ]
            out.append({"role": "user", "content": parts})
        elif text or not any(isinstance(b, ToolResultBlock) for b in message.content):
            out.append({"role": "user", "content": text})
    return out
