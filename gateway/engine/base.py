"""The engine interface: load a model, stream generations from it, stop it."""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.toolprompt import generic_messages, generic_schema
from gateway.tools import forced_hint, forced_schema

if TYPE_CHECKING:  # the worker process imports this module: keep pydantic out of it
    from gateway.config import ModelEntry
    from gateway.protocol import ChatCompletionRequest, CompletionRequest, _GenerationRequest

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


@dataclass(frozen=True)
class GenerationParams:
    """One generation, in plain values that cross a process boundary."""

    messages: list[dict[str, Any]] | None  # a chat, formatted with the model's template
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    stop: list[str]
    seed: int | None
    delta_interval: float = 0.0  # seconds the engine may coalesce streamed text over
    # Output constraint enforced with a grammar: {"json_object": True} or {"json_schema": {...}}.
    constraint: dict[str, Any] | None = None
    prompt: str | None = None  # raw text completion instead of a chat
    logit_bias: dict[str, float] | None = None  # token id (as JSON keys are strings) -> bias
    logprobs: bool = False
    top_logprobs: int = 0
    tools: list[dict[str, Any]] | None = None  # offered to the chat template
    n: int = 1  # choices, decoded together

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerationParams:
        return cls(**data)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _sampling(request: _GenerationRequest, entry: ModelEntry, delta_interval: float) -> dict[str, Any]:
    """Request fields over the model entry's `sampling` defaults."""
    defaults = entry.sampling
    return {
        "temperature": _pick(request.temperature, defaults.temperature),
        "top_p": _pick(request.top_p, defaults.top_p),
        "top_k": _pick(request.top_k, defaults.top_k),
        "min_p": _pick(request.min_p, defaults.min_p),
        "repeat_penalty": _pick(request.repeat_penalty, defaults.repeat_penalty),
        "presence_penalty": _pick(request.presence_penalty, defaults.presence_penalty),
        "frequency_penalty": _pick(request.frequency_penalty, defaults.frequency_penalty),
        "stop": request.stop_list,
        "seed": _pick(request.seed, defaults.seed),
        "logit_bias": request.logit_bias,
        # Nobody sees the pieces of a non-streamed answer: send them in one message at the end.
        "delta_interval": delta_interval if request.stream else math.inf,
    }


def chat_params(
    request: ChatCompletionRequest, entry: ModelEntry, delta_interval: float = 0.0, *, native_tools: bool = True
) -> GenerationParams:
    """Request fields over the model entry's `sampling` and `output` defaults. `native_tools`: the
    model's chat template presents tools itself; else they go in a generic tool prompt."""
    messages = [m.for_template() for m in request.messages]
    tools = request.tools_for_template()
    forced = bool(tools) and request.tool_mode in ("named", "required")
    if not native_tools:
        messages = generic_messages(messages, None if forced else tools)
    if tools and forced:
        messages.insert(0, {"role": "system", "content": forced_hint(tools, request.forced_tool)})
    return GenerationParams(
        messages=messages,
        tools=tools if native_tools else None,
        max_tokens=_pick(request.completion_limit, entry.output.max_tokens),
        constraint=_constraint(request, entry, native_tools),
        logprobs=bool(request.logprobs),
        top_logprobs=request.top_logprobs or 0,
        n=request.choices,
        **_sampling(request, entry, delta_interval),
    )


def completion_params(
    request: CompletionRequest, prompt: str, entry: ModelEntry, delta_interval: float = 0.0
) -> GenerationParams:
    return GenerationParams(
        messages=None,
        prompt=prompt,
        max_tokens=_pick(request.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS),
        n=request.choices,
        logprobs=request.logprobs is not None,
        top_logprobs=request.logprobs or 0,
        **_sampling(request, entry, delta_interval),
    )


def _constraint(request: ChatCompletionRequest, entry: ModelEntry, native_tools: bool) -> dict[str, Any] | None:
    tools = request.tools_for_template()
    if tools and request.tool_mode in ("named", "required"):
        return {"json_schema": forced_schema(tools, request.forced_tool)}
    if generic_auto(request, native_tools):
        return {"json_schema": generic_schema(tools or [])}
    if request.response_format is not None:
        return request.response_format.constraint()
    if entry.output.grammar_schema is not None:
        return {"json_schema": entry.output.grammar_schema}
    return None


def generic_auto(request: ChatCompletionRequest, native_tools: bool) -> bool:
    """Tools on `auto` for a template without them: the answer takes the generic tool format (a
    response_format, which would constrain it otherwise, leaves the tools to the prompt alone)."""
    plain = request.response_format is None or request.response_format.type == "text"
    return request.tool_mode == "auto" and not native_tools and plain


@dataclass(frozen=True)
class Started:
    """The prompt was rendered, tokenized and fits the context: generation is under way."""

    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    text: str
    # Per token, when asked for: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}
    logprobs: list[dict[str, Any]] | None = None
    index: int = 0  # which of the generation's choices


@dataclass(frozen=True)
class ChoiceFinished:
    """One of several choices ended (n > 1); a single choice ends with Finished alone."""

    index: int
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


Event = Started | Delta | ChoiceFinished | Finished


@dataclass(frozen=True)
class BatchState:
    """A worker's continuous batch: requests decoding, requests waiting for a slot or KV room, and
    KV cells that running requests hold or have reserved, out of the pool."""

    running: int
    waiting: int
    kv_used: int
    kv_cells: int
    reused_tokens: int = 0  # prompt tokens taken from cached or running sequences' cells, since load

    @property
    def kv_usage(self) -> float:
        return self.kv_used / self.kv_cells if self.kv_cells else 0.0


class Generation:
    """Events of one generation, fed by its engine; errors arrive as GatewayError."""

    def __init__(self, request_id: int, on_cancel: Callable[[int], None], choices: int = 1) -> None:
        self.request_id = request_id
        self.choices = choices
        self._queue: asyncio.Queue[Event | GatewayError] = asyncio.Queue()
        self._on_cancel = on_cancel
        self.done = False

    def feed(self, item: Event | GatewayError) -> None:
        self._queue.put_nowait(item)

    async def next_event(self) -> Event:
        if self.done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, GatewayError):
            self.done = True
            raise item
        if isinstance(item, Finished):
            self.done = True
        return item

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Event:
        return await self.next_event()

    def cancel(self) -> None:
        """Stop generating (the client went away); harmless once finished."""
        if not self.done:
            self.done = True
            self._on_cancel(self.request_id)


class Engine(ABC):
    """A loaded model. One generation runs at a time; others wait in order."""

    def __init__(self) -> None:
        self._exit_callback: Callable[[str], None] | None = None

    @abstractmethod
    async def start(self) -> None:
        """Load the model; raises GatewayError when it cannot be loaded."""

    @abstractmethod
    def generate(self, params: GenerationParams) -> Generation: ...

    @abstractmethod
    async def stop(self) -> None:
        """Unload: the model's memory is returned to the system when this returns."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def tokenize(self, text: str) -> list[int]:
        """The model's tokens for `text` (no BOS), computed without waiting behind generations."""

    @abstractmethod
    async def detokenize(self, tokens: list[int]) -> str: ...

    @abstractmethod
    async def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """Unit-length vectors, one per input, and the number of tokens read (embedding models)."""

    @abstractmethod
    def measured_bytes(self) -> int | None:
        """Memory the loaded model holds now, or None before it is loaded."""

    def batch_state(self) -> BatchState | None:
        """The worker's batch as last reported (None: not known, e.g. before load)."""
        return None

    def on_exit(self, callback: Callable[[str], None]) -> None:
        """Register a callback for an unexpected exit (crash); the argument says why."""
        self._exit_callback = callback

    def _report_exit(self, reason: str) -> None:
        if self._exit_callback is not None:
            self._exit_callback(reason)


EngineFactory = Callable[[str, "ModelEntry"], Engine]
