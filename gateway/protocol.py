"""OpenAI wire formats: request validation and response/chunk builders. Pure: no I/O."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway import limits, structured
from gateway.errors import invalid_request
from gateway.jsonbody import parse_object

Name = Annotated[str, Field(max_length=limits.MAX_NAME_CHARS)]
_TOKEN_ID_KEY = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also takes "²"


class _Strict(BaseModel):
    # strict: "5" is not an integer and 1 is not a boolean, as in OpenAI's API.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: Annotated[str, Field(max_length=limits.MAX_TOOL_NAME_CHARS)]
    arguments: str


class ToolCall(_Strict):
    id: Name
    type: Literal["function"]
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=limits.MAX_TOOLS)] | None = None  # assistant turns
    tool_call_id: Name | None = None  # tool turns: the call they answer

    @model_validator(mode="after")
    def _tool_turns(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        return self

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates take it ("developer" is "system" to them)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
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
        return message

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionSpec(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: Annotated[str, Field(max_length=limits.MAX_TOOL_DESCRIPTION_CHARS)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: Annotated[str, Field(max_length=limits.MAX_TOOL_NAME_CHARS)]


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: Annotated[str, Field(max_length=limits.MAX_TOOL_DESCRIPTION_CHARS)] | None = None


class ResponseFormat(_Strict):
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


_Model = TypeVar("_Model", bound=BaseModel)

# Fields OpenAI defines that this gateway does not implement yet: refused by name, never ignored.
UNSUPPORTED_FIELDS = (
    "functions",
    "function_call",
    "audio",
    "prediction",
    "web_search_options",
)

MAX_CHOICES = 16  # n: choices are generated one after another on the model's worker


class _GenerationRequest(_Strict):
    """Fields chat and text completions share."""

    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: int | None = None  # any 64-bit integer (jsonbody checks the range); llama.cpp uses it mod 2**32
    stop: (
        Annotated[str, Field(max_length=limits.MAX_STOP_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=limits.MAX_STOP_CHARS)]],
            Field(max_length=limits.MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    logit_bias: (
        Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=limits.MAX_LOGIT_BIAS)] | None
    ) = None
    user: Annotated[str, Field(max_length=limits.MAX_USER_CHARS)] | None = None
    # llama.cpp sampling extensions
    top_k: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0)] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not _TOKEN_ID_KEY.fullmatch(key) or int(key) > limits.MAX_TOKEN_ID:
                raise ValueError(f"keys must be token ids (0..{limits.MAX_TOKEN_ID}), got {key[:20]!r}")
        return value

    def token_ids(self) -> list[int]:
        """The token ids the request names (logit_bias keys), to check against the vocabulary."""
        return [int(key) for key in self.logit_bias or {}]

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    @property
    def completion_limit(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[Message] = Field(min_length=1, max_length=limits.MAX_MESSAGES)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text"]] | None = None
    tools: Annotated[list[Tool], Field(min_length=1, max_length=limits.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @property
    def tool_mode(self) -> str:
        """none (no tools in play), auto, required, or named."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    @property
    def forced_tool(self) -> str | None:
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def tools_for_template(self) -> list[dict[str, Any]] | None:
        if self.tool_mode == "none" or not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=limits.MAX_PROMPTS)]
    echo: bool = False
    suffix: str | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _param_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif (
            part in {"str", "list[TextPart]", "TextPart", "int", "float", "bool", "none"}
            or "[" in part
            or part.startswith("constrained-")
        ):
            continue  # union branch labels pydantic adds to the location
        else:
            name += f".{part}" if name else part
    return name


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "literal_error" and error["loc"][-1] == "role":
        return f"{str(error['input'])[:40]!r} is not a supported role (system, developer, user, assistant, tool)"
    return str(error["msg"]).replace("Input should be", "should be")


def _load_json(body: bytes) -> dict[str, Any]:
    return parse_object(body)


def _refuse(data: dict[str, Any], unsupported: tuple[str, ...]) -> None:
    """Fields OpenAI defines that this gateway does not implement: a 400 naming them, never ignored."""
    for name in unsupported:
        if data.get(name) is not None:
            raise invalid_request(f"'{name}' is not supported by this gateway yet.", param=name)
    if data.get("stream_options") is not None and not data.get("stream"):
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


def _validate(cls: type[_Model], data: dict[str, Any]) -> _Model:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        # A violated limit or value says more than "should be a string" from another branch of a union;
        # then the deepest error (content: str | parts) is the one that explains the problem.
        first = max(exc.errors(), key=lambda e: (not e["type"].endswith("_type"), len(e["loc"])))
        param = _param_name(first["loc"])
        message = f"Invalid value for '{param}': {_describe(dict(first))}." if param else str(first["msg"])
        raise invalid_request(message, param=param or None) from None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat completion request body, or raise a 400 naming the bad param."""
    data = _load_json(body)
    _refuse(data, UNSUPPORTED_FIELDS)
    if data.get("top_logprobs") is not None and data.get("logprobs") is not True:
        raise invalid_request("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    chat = _validate(ChatCompletionRequest, data)
    if chat.tool_choice is not None and not chat.tools:
        raise invalid_request("'tool_choice' needs 'tools'.", param="tool_choice")
    names: set[str] = set()
    for tool in chat.tools or []:
        if tool.function.name in names:  # which one a call meant could not be told
            raise invalid_request(
                f"Tool names must be unique; '{tool.function.name}' is given more than once.", param="tools"
            )
        names.add(tool.function.name)
    if chat.forced_tool is not None and chat.forced_tool not in names:
        raise invalid_request(f"tool_choice names '{chat.forced_tool}', which is not in 'tools'.", param="tool_choice")
    if chat.tool_mode in ("named", "required") and chat.response_format and chat.response_format.type != "text":
        raise invalid_request(
            "A forced tool call and a response_format cannot both constrain the answer.", "response_format"
        )
    if chat.response_format is not None:
        chat.response_format.check()
    if chat.tool_mode in ("named", "required"):
        for index, tool in enumerate(chat.tools or []):
            if tool.function.parameters and chat.forced_tool in (None, tool.function.name):
                structured.check(tool.function.parameters, f"tools[{index}].function.parameters")
    return chat


def parse_completion_request(body: bytes) -> CompletionRequest:
    """Parse and validate a legacy text completion request body, or raise a 400 naming the bad param."""
    data = _load_json(body)
    _refuse(data, ())
    if data.get("suffix"):
        raise invalid_request("'suffix' (insertion) is not supported by this gateway.", param="suffix")
    if data.get("echo") is True and data.get("logprobs") is not None:
        raise invalid_request("'logprobs' for the echoed prompt is not supported; drop 'echo'.", param="logprobs")
    if isinstance(data.get("best_of"), int) and data["best_of"] > 1:
        raise invalid_request("'best_of' greater than 1 is not supported by this gateway yet.", param="best_of")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and prompt and not all(isinstance(p, str) for p in prompt):
        raise invalid_request("'prompt' as token arrays is not supported yet; send text.", param="prompt")
    return _validate(CompletionRequest, data)


class TokenizeRequest(_Strict):
    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    input: str

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str) -> str:
        if len(value) > limits.MAX_TOKENIZE_BYTES or len(value.encode("utf-8")) > limits.MAX_TOKENIZE_BYTES:
            raise ValueError(f"at most {limits.MAX_TOKENIZE_BYTES} bytes of UTF-8 text can be tokenized at once")
        return value


class DetokenizeRequest(_Strict):
    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    tokens: list[Annotated[int, Field(ge=0, le=limits.MAX_TOKEN_ID)]]


def parse_tokenize_request(body: bytes) -> TokenizeRequest:
    return _validate(TokenizeRequest, _load_json(body))


def parse_detokenize_request(body: bytes) -> DetokenizeRequest:
    return _validate(DetokenizeRequest, _load_json(body))


def check_vocabulary(token_ids: list[int], n_vocab: int, param: str) -> None:
    """Token ids a request names must exist in the model's vocabulary (0 when the GGUF does not say:
    the worker checks again against the loaded model either way)."""
    if n_vocab <= 0 or not token_ids:
        return
    bad = max(token_ids)
    if bad >= n_vocab:
        raise invalid_request(f"Token id {bad} is outside this model's vocabulary (0..{n_vocab - 1}).", param=param)


MAX_EMBEDDING_INPUTS = limits.MAX_EMBEDDING_INPUTS
TokenId = Annotated[int, Field(ge=0, le=limits.MAX_TOKEN_ID)]


class EmbeddingRequest(_Strict):
    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: Annotated[str, Field(max_length=limits.MAX_USER_CHARS)] | None = None

    @property
    def inputs(self) -> list[str | list[int]]:
        """Each input to embed: a text, or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        items: list[Any] = list(self.input)
        if all(isinstance(item, int) for item in items):
            return [items]  # one token array
        return items

    def token_ids(self) -> list[int]:
        return [t for item in self.inputs if isinstance(item, list) for t in item]


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    data = _load_json(body)
    if data.get("input") == "" or (isinstance(data.get("input"), list) and "" in data["input"]):
        raise invalid_request("'input' cannot contain empty strings.", param="input")
    return _validate(EmbeddingRequest, data)
