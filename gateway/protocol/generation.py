"""Chat and text completion requests: their fields, and the checks that span several of them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from gateway import structured
from gateway.errors import invalid_request
from gateway.protocol import limits
from gateway.protocol.imageparts import check_image_parts
from gateway.protocol.parts import Message, NamedToolChoice, ResponseFormat, StreamOptions, Tool
from gateway.protocol.validation import Strict, load_json, refuse, validate

TOKEN_ID_KEY = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also takes "²"

# Fields OpenAI defines that this gateway does not implement yet: refused by name, never ignored.
UNSUPPORTED_FIELDS = (
    "functions",
    "function_call",
    "audio",
    "prediction",
    "web_search_options",
)

MAX_CHOICES = 16  # n: choices are generated one after another on the model's worker


class GenerationRequest(Strict):
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
    # "flex" runs the request at batch priority (scheduler/fairness.py); no tier raises a key's priority.
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    # llama.cpp sampling extensions
    top_k: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0)] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not TOKEN_ID_KEY.fullmatch(key) or int(key) > limits.MAX_TOKEN_ID:
                raise ValueError(f"keys must be token ids (0..{limits.MAX_TOKEN_ID}), got {key[:20]!r}")
        return value

    def token_ids(self) -> list[int]:
        """The token ids the request names (logit_bias keys), to check against the vocabulary."""
        return [int(key) for key in self.logit_bias or {}]

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def flex(self) -> bool:
        return self.service_tier == "flex"

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


class ChatCompletionRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1, max_length=limits.MAX_MESSAGES)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text"]] | None = None
    tools: Annotated[list[Tool], Field(min_length=1, max_length=limits.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted, and change nothing here (docs/api.md says so for each): what the client labels or
    # routes by, and OpenAI's defaults of settings that would change the answer (others are refused).
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    prompt_cache_key: Annotated[str, Field(max_length=limits.MAX_USER_CHARS)] | None = None
    safety_identifier: Annotated[str, Field(max_length=limits.MAX_USER_CHARS)] | None = None
    store: bool | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # Reasoning models: how hard to think (none switches thinking off where the template can), a
    # thinking budget in tokens, `none` to get the raw text in `content`, and the template's variables.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    max_reasoning_tokens: Annotated[int, Field(ge=0)] | None = None
    reasoning_format: Literal["none", "auto", "deepseek", "parsed"] | None = None
    chat_template_kwargs: Annotated[dict[str, Any], Field(max_length=64)] | None = None

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


class CompletionRequest(GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=limits.MAX_PROMPTS)]
    echo: bool = False
    suffix: str | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a chat completion request body, or raise a 400 naming the bad param."""
    data = load_json(body)
    refuse(data, UNSUPPORTED_FIELDS)
    if data.get("top_logprobs") is not None and data.get("logprobs") is not True:
        raise invalid_request("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    chat = validate(ChatCompletionRequest, data)
    _refuse_unkept(chat)
    check_image_parts(chat.messages)
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


def _refuse_unkept(chat: ChatCompletionRequest) -> None:
    """Values of accepted fields that ask for what this gateway cannot do: a 400, not a silent default."""
    if chat.store:
        raise invalid_request(
            "'store': true is not supported: chat completions are not kept for retrieval here "
            "(the Responses API stores its responses).",
            param="store",
        )
    if chat.verbosity not in (None, "medium"):
        raise invalid_request(
            f"'verbosity': '{chat.verbosity}' is not supported: local models answer at their own length; "
            "set 'max_completion_tokens' or say so in the prompt.",
            param="verbosity",
        )


def parse_completion_request(body: bytes) -> CompletionRequest:
    """Parse and validate a legacy text completion request body, or raise a 400 naming the bad param."""
    data = load_json(body)
    refuse(data, ())
    if data.get("suffix"):
        raise invalid_request("'suffix' (insertion) is not supported by this gateway.", param="suffix")
    if data.get("echo") is True and data.get("logprobs") is not None:
        raise invalid_request("'logprobs' for the echoed prompt is not supported; drop 'echo'.", param="logprobs")
    if isinstance(data.get("best_of"), int) and data["best_of"] > 1:
        raise invalid_request("'best_of' greater than 1 is not supported by this gateway yet.", param="best_of")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and prompt and not all(isinstance(p, str) for p in prompt):
        raise invalid_request("'prompt' as token arrays is not supported yet; send text.", param="prompt")
    return validate(CompletionRequest, data)
