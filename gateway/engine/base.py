"""The engine interface: load a model, stream generations from it, stop it."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gateway.engine.loadlog import LoadReport, OutOfMemory
from gateway.errors import GatewayError, context_length_exceeded

if TYPE_CHECKING:  # the worker process imports this module: keep pydantic out of it
    from gateway.config import ModelEntry


# Where an image part was, the text a chat template renders holds this marker (libmtmd's default):
# the worker's projector splits the prompt there and puts the image's tokens in its place.
MEDIA_MARKER = "<__media__>"


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
    # Output constraint, a checked schema the worker enforces with llguidance: {"json_schema": {...}}.
    constraint: dict[str, Any] | None = None
    prompt: str | None = None  # raw text completion instead of a chat
    logit_bias: dict[str, float] | None = None  # token id (as JSON keys are strings) -> bias
    logprobs: bool = False
    top_logprobs: int = 0
    tools: list[dict[str, Any]] | None = None  # offered to the chat template
    n: int = 1  # choices, decoded together
    # The chat ends with an assistant message to continue (prefill): its turn is left open.
    continue_final: bool = False
    # A reasoning model's thinking: {"format": engine.reasoning name, "budget": tokens or None}.
    reasoning: dict[str, Any] | None = None
    template_kwargs: dict[str, Any] | None = None  # extra variables for the Jinja chat template
    # The chat's images in order, one per media marker in its messages' text (gateway.images):
    # {"digest": sha256 of the pixels, "width", "height", "rgb": width x height x 3 bytes}.
    images: list[dict[str, Any]] | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerationParams:
        return cls(**data)


def completion_room(prompt_tokens: int, n_ctx: int, n: int, max_tokens: int | None, param: str) -> int:
    """The context-length rule: tokens each of `n` choices may generate after a prompt of
    `prompt_tokens` in a context of `n_ctx`; a prompt that leaves no room is a 400."""
    room = (n_ctx - prompt_tokens) // n
    if room <= 0:
        raise context_length_exceeded(prompt_tokens, n_ctx, param)
    return min(max_tokens, room) if max_tokens else room


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
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason "stop")
    reasoning_tokens: int = 0  # of completion_tokens, those inside the thinking


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None  # the stop string that ended a single choice
    reasoning_tokens: int = 0  # of completion_tokens, those inside the thinking
    cached_tokens: int = 0  # of prompt_tokens, those whose cells were reused (a cached or stored prefix)


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
    paused: int = 0  # requests set aside for more urgent ones
    replayed_tokens: int = 0  # tokens recomputed for paused requests whose cells were given away, since load
    drafted_tokens: int = 0  # speculative decoding: tokens drafted since load
    accepted_tokens: int = 0  # of those, tokens the model sampled too (kept without a step of their own)
    restored: int = 0  # prefixes loaded from the prefix store, since load
    restored_tokens: int = 0  # their tokens
    image_encodes: int = 0  # images run through the vision projector, since load
    image_cache_hits: int = 0  # images taken from the worker's encode cache instead, since load

    @property
    def kv_usage(self) -> float:
        return self.kv_used / self.kv_cells if self.kv_cells else 0.0


class Generation:
    """Events of one generation, fed by its engine; errors arrive as GatewayError."""

    def __init__(
        self,
        request_id: int,
        on_cancel: Callable[[int], None],
        choices: int = 1,
        on_pause: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.choices = choices
        self._queue: asyncio.Queue[Event | GatewayError] = asyncio.Queue()
        self._on_cancel = on_cancel
        self._on_pause = on_pause  # (request id, paused): None where the engine cannot pause
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

    def pause(self) -> bool:
        """Set it aside for a more urgent request (its stream only sees a pause); False when it has
        ended or its engine cannot pause."""
        if self.done or self._on_pause is None:
            return False
        self._on_pause(self.request_id, True)
        return True

    def resume(self) -> None:
        if not self.done and self._on_pause is not None:
            self._on_pause(self.request_id, False)

    def cancel(self) -> None:
        """Stop generating (the client went away); harmless once finished."""
        if not self.done:
            self.done = True
            self._on_cancel(self.request_id)


@dataclass(frozen=True)
class DevicePlacement:
    """Where a worker runs: the environment it starts with (it sees only its GPUs), llama.cpp's
    arguments (n_gpu_layers, main_gpu, tensor_split), and the gateway's pools in the order the worker
    numbers its devices (its cuda0 is `devices[0]`)."""

    env: dict[str, str]
    llama: dict[str, Any]
    devices: tuple[str, ...] = ()


class Engine(ABC):
    """A loaded model. The scheduler submits at most `runtime.parallel` generations at once."""

    def __init__(self) -> None:
        self._exit_callback: Callable[[str], None] | None = None
        self.placement: DevicePlacement | None = None  # None: as configured, on whatever the worker sees

    def place(self, placement: DevicePlacement) -> None:
        """Put the model on these devices (before `start`)."""
        self.placement = placement

    @property
    def pid(self) -> int | None:
        """The worker process, where there is one (NVML reports device memory per process)."""
        return None

    def memory_report(self) -> LoadReport | None:
        """What llama.cpp allocated per device (the worker's own device names), after a load or a
        failed one; None when not known."""
        return None

    def out_of_memory(self) -> OutOfMemory | None:
        """The allocation that failed, when the load or the running worker ran out of device memory."""
        report = self.memory_report()
        return report.oom if report is not None else None

    @abstractmethod
    async def start(self) -> None:
        """Load the model; raises GatewayError when it cannot be loaded."""

    @abstractmethod
    def generate(self, params: GenerationParams) -> Generation: ...

    @abstractmethod
    async def stop(self, reason: str | None = None) -> None:
        """Unload: the model's memory is returned to the system when this returns. Requests still
        running fail with `model_unloaded` naming `reason` (without one: as if the worker had died)."""

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
