"""OpenAI Responses requests (`POST /v1/responses`) → the internal chat completion request. The input
items themselves: `input.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gateway.dialects.common import Strict, load_json, refuse, validate
from gateway.dialects.responses.input import Item, MessageItem, check_images, item_messages, parse_item
from gateway.errors import invalid_request
from gateway.protocol import ChatCompletionRequest
from gateway.protocol.reasoning import Ask


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(Strict):
    type: Literal["function"]
    name: str


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted; a local model's length is its own


class ReasoningConfig(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # its older name
    context: Any = None  # accepted: the reasoning of earlier turns is what the template keeps of it


class ConversationRef(Strict):
    id: str = Field(min_length=1)


class ResponsesRequest(Strict):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    text: TextConfig | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: ReasoningConfig | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    # Only the (absent) encrypted reasoning may be asked for: nothing is encrypted, so none is sent.
    include: list[Literal["reasoning.encrypted_content"]] | None = None

    @property
    def summary(self) -> str | None:
        config = self.reasoning
        return None if config is None else config.summary or config.generate_summary

    def reasoning_ask(self) -> Ask:
        """`reasoning.effort` as the chat's control: none (or null) asks for no thinking, which every
        model accepts; absent leaves the model's default."""
        if self.reasoning is None:
            return Ask()
        effort = self.reasoning.effort
        if effort in (None, "none"):
            return Ask(effort="none", param="reasoning.effort")
        return Ask(effort="high" if effort == "xhigh" else effort, param="reasoning.effort", asked=True)

    conversation: str | ConversationRef | None = None

    def items(self) -> list[Item]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return [parse_item(i, raw) for i, raw in enumerate(self.input)]

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation


UNSUPPORTED = {
    "background": "background responses are not available.",
    "prompt": "stored prompt templates are not available.",
    "top_logprobs": "log probabilities are not available on /v1/responses; use /v1/chat/completions.",
    "max_tool_calls": "a limit on built-in tool calls does not apply here.",
}


def _check_tools(data: dict[str, Any]) -> None:
    for i, tool in enumerate(data.get("tools") or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise invalid_request(
                f"Built-in tool '{kind}' is not supported by this gateway; only function tools are.",
                param=f"tools[{i}].type",
            )
    choice = data.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        raise invalid_request(
            f"tool_choice of type '{choice.get('type')}' is not supported by this gateway "
            "(none, auto, required or a function are).",
            param="tool_choice",
        )


def parse_responses_request(body: bytes, counting: bool = False) -> ResponsesRequest:
    """`counting`: the body of `POST /v1/responses/input_tokens`, whose `input` may be left out."""
    return parse_responses_data(load_json(body), counting)


def parse_responses_data(data: dict[str, Any], counting: bool = False) -> ResponsesRequest:
    """A request from its JSON body (`item_reference`s already replaced by the items they name)."""
    if counting and data.get("input") is None:
        data["input"] = []
    refuse(data, UNSUPPORTED)
    _check_tools(data)
    request = validate(ResponsesRequest, data)
    check_images(request.items())  # every input item is checked before the 200
    if request.conversation is not None and request.previous_response_id:
        raise invalid_request(
            "'conversation' and 'previous_response_id' cannot both be given.", param="previous_response_id"
        )
    names = {t.name for t in request.tools or []}
    if isinstance(request.tool_choice, NamedFunction) and request.tool_choice.name not in names:
        raise invalid_request(
            f"tool_choice names '{request.tool_choice.name}', which is not in 'tools'.", "tool_choice"
        )
    fmt = request.text.format if request.text else None
    if fmt is not None and fmt.type == "json_schema" and (not fmt.name or fmt.schema_ is None):
        raise invalid_request("text.format of type 'json_schema' needs 'name' and 'schema'.", "text.format")
    return request


def input_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    return item_messages(request.items())


def _response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    fmt = request.text.format if request.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}


def to_chat(request: ResponsesRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat for this request: instructions, the stored conversation it continues, its input."""
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    messages += [*history, *input_messages(request)]
    chat: dict[str, Any] = {"model": request.model, "messages": messages, "stream": bool(request.stream)}
    if request.stream:
        chat["stream_options"] = {"include_usage": True}
    if request.tools:
        chat["tools"] = [
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})} for t in request.tools
        ]
        choice = request.tool_choice
        if choice is not None:
            chat["tool_choice"] = (
                choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
            )
    fields = {"max_tokens": request.max_output_tokens, "temperature": request.temperature, "top_p": request.top_p}
    chat.update({k: v for k, v in fields.items() if v is not None})
    response_format = _response_format(request)
    if response_format is not None:
        chat["response_format"] = response_format
    if request.user:
        chat["user"] = request.user
    if request.service_tier:
        chat["service_tier"] = request.service_tier
    return validate(ChatCompletionRequest, chat)
