"""The parts of a chat request: messages, tools, a tool choice, a response format."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway import structured
from gateway.protocol import limits
from gateway.protocol.validation import Strict

Name = Annotated[str, Field(max_length=limits.MAX_NAME_CHARS)]


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageUrl(Strict):
    url: str  # a base64 data URL, or an http(s) URL the operator lets the gateway fetch
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the projector sees the image one way


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(Strict):
    name: Annotated[str, Field(max_length=limits.MAX_TOOL_NAME_CHARS)]
    arguments: str


class ToolCall(Strict):
    id: Name
    type: Literal["function"]
    function: FunctionCall


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=limits.MAX_TOOLS)] | None = None  # assistant turns
    tool_call_id: Name | None = None  # tool turns: the call they answer
    # Assistant turns of a reasoning model sent back: their thinking (vLLM's newer name is `reasoning`).
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_validator(mode="after")
    def _tool_turns(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        return self

    def for_template(self, image: str = "") -> dict[str, Any]:
        """The message as chat templates take it ("developer" is "system" to them); `image`: the text
        an image part becomes (the engine's media marker)."""
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": self.text(image)}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        thinking = self.reasoning_content if self.reasoning_content is not None else self.reasoning
        if self.role == "assistant" and thinking:
            # The templates' own names for it: Qwen3 and DeepSeek read `reasoning_content` (and drop
            # past thinking), gpt-oss `thinking`; a template that reads neither never shows it.
            message["reasoning_content"] = message["thinking"] = thinking
        return message

    def text(self, image: str = "") -> str:
        """The text parts, with `image` where each image part is."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text if isinstance(part, TextPart) else image for part in self.content)

    def image_parts(self) -> list[tuple[int, ImagePart]]:
        """The image parts with their index in `content`."""
        if not isinstance(self.content, list):
            return []
        return [(j, part) for j, part in enumerate(self.content) if isinstance(part, ImagePart)]


class StreamOptions(Strict):
    include_usage: bool = False


class FunctionSpec(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: Annotated[str, Field(max_length=limits.MAX_TOOL_DESCRIPTION_CHARS)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Strict):
    name: Annotated[str, Field(max_length=limits.MAX_TOOL_NAME_CHARS)]


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Strict):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: Annotated[str, Field(max_length=limits.MAX_TOOL_DESCRIPTION_CHARS)] | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    # llama-cpp-python's extension: {"type": "json_object", "schema": {...}} (sent by older instructor).
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when type is 'json_schema'")
        return self

    def check(self) -> None:
        """A 400 naming the schema and the keyword when the engine cannot enforce it."""
        if self.type == "json_schema" and self.json_schema is not None:
            structured.check(self.json_schema.schema_, "response_format.json_schema.schema")
        elif self.type == "json_object" and self.schema_ is not None:
            structured.check(self.schema_, "response_format.schema")

    def constraint(self) -> dict[str, Any] | None:
        """What the engine must enforce: {"json_schema": <a checked schema>}, or None for text."""
        if self.type == "json_object":
            return {"json_schema": self.schema_ if self.schema_ is not None else structured.ANY_OBJECT}
        if self.type == "json_schema" and self.json_schema is not None:
            schema = self.json_schema.schema_
            return {"json_schema": structured.strict(schema) if self.json_schema.strict else schema}
        return None
