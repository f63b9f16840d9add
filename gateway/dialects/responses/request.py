"""OpenAI Responses requests (`POST /v1/responses`) → the internal chat completion request."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gateway.dialects.common import Strict, load_json, refuse, validate
from gateway.errors import invalid_request
from gateway.images.source import check_count, check_source
from gateway.protocol import ChatCompletionRequest
from gateway.protocol.reasoning import Ask

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
        return [_item(i, raw) for i, raw in enumerate(self.input)]

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation


UNSUPPORTED = {
    "background": "background responses are not available.",
    "prompt": "stored prompt templates are not available.",
    "top_logprobs": "log probabilities are not available on /v1/responses; use /v1/chat/completions.",
    "max_tool_calls": "a limit on built-in tool calls does not apply here.",
}
_CONTENT_PARTS = {"input_text", "output_text", "input_image"}


def check_items(raw: list[Any], param: str = "input") -> None:
    """Items as input items are checked: message, function_call or function_call_output, text only."""
    for index, item in enumerate(raw):
        _item(index, item, param)


def _item(index: int, raw: Any, field: str = "input") -> Item:
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
    _check_images(request.items())  # every input item is checked before the 200
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


def _check_images(items: list[Item]) -> None:
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


def input_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    return item_messages(request.items())


def kept_messages(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept items (a conversation's) as chat messages."""
    return item_messages([_item(i, raw) for i, raw in enumerate(kept)])


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
