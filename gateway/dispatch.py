"""Runs a plan against a held model: hold, start, stream or collect, release.

The hold is owned by one `async with` for the whole life of the answer. For a streamed answer that
block lives inside the stream's own generator: `open_stream` takes its first step, which holds the
model and starts the generation, so every error up to there still raises with its own status
(before the 200). Afterwards the generator runs to its end, fails in-band, or is closed
(`ChatStream.close`, when the client goes away or the stream is dropped unread), and the `async with`
releases the hold in every case.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.base import Engine, Generation, GenerationParams, Started, completion_room
from gateway.errors import internal_error
from gateway.plan import Plan
from gateway.record import RequestRecord
from gateway.scheduler import Hold, Scheduler
from gateway.streaming import chunk_stream, collect_all


@dataclass(frozen=True)
class Begun:
    """The model is held and the first generation has begun."""

    prompt_tokens: int


@dataclass(frozen=True)
class ChatStream:
    """A begun stream that owns its model's hold until it ends or is closed: OpenAI chunks (dicts),
    the usage chunk last when asked for. A failure after the start is raised from the iteration."""

    chunks: AsyncGenerator[dict[str, Any], None]
    prompt_tokens: int
    model: str
    _body: AsyncGenerator[Begun | dict[str, Any], None]
    # Choice index -> the stop string that ended it, filled as choices end (see `Answer`).
    stop_sequences: dict[int, str] = field(default_factory=dict)

    async def close(self) -> None:
        """Stop reading: the generation is cancelled and the hold released (a no-op once ended)."""
        await self.chunks.aclose()
        await self._body.aclose()  # `chunks` never started runs no cleanup of its own


@dataclass(frozen=True)
class Answer:
    """A finished non-streamed answer: OpenAI's body, and the stop string that ended each choice that
    one ended (OpenAI's shapes do not carry it; Anthropic's `stop_sequence` does)."""

    body: dict[str, Any]
    stop_sequences: dict[int, str]


async def start(engine: Engine, params: GenerationParams) -> tuple[Generation, int]:
    """Submit a generation and wait until it has begun; returns it and its prompt's token count.
    Rendering, tokenizing and the context check happen before that, so their errors are still
    answered with their own status."""
    generation = engine.generate(params)
    try:
        first = await generation.next_event()
        if not isinstance(first, Started):
            raise internal_error(f"unexpected first event {type(first).__name__}")
    except BaseException:
        generation.cancel()
        raise
    return generation, first.prompt_tokens


async def _begin(held: Hold, plan: Plan) -> tuple[Plan, Generation, int]:
    """The plan for the version held, its later prompts checked, its first generation started."""
    plan = plan.for_version(held.view())
    n_ctx = held.entry.model.n_ctx
    for params in plan.generations[1:]:  # they start after the answer has begun: check them now
        tokens = len(await held.engine.tokenize(params.prompt or "")) + 1  # + BOS
        completion_room(tokens, n_ctx, params.n, params.max_tokens, "prompt")
    generation, prompt_tokens = await start(held.engine, plan.generations[0])
    return plan, generation, prompt_tokens


async def _generations(held: Hold, plan: Plan, first: Generation) -> AsyncIterator[tuple[int, Generation]]:
    """The first generation (already started), then the rest, each started when its turn comes;
    each with the index its choices are numbered from."""
    yield 0, first
    for position, params in enumerate(plan.generations[1:], start=1):
        generation, _ = await start(held.engine, params)
        yield position * params.n, generation


async def open_stream(plan: Plan, scheduler: Scheduler, record: RequestRecord | None) -> ChatStream:
    """Hold the model and begin the stream; raises the errors that have a status of their own."""
    stop_sequences: dict[int, str] = {}
    body = _stream_in_hold(plan, scheduler, record, stop_sequences)
    try:
        begun = await anext(body)
    except BaseException:
        await body.aclose()
        raise
    assert isinstance(begun, Begun)
    return ChatStream(_chunks(body), begun.prompt_tokens, plan.model_id, body, stop_sequences)


async def _stream_in_hold(
    plan: Plan, scheduler: Scheduler, record: RequestRecord | None, stop_sequences: dict[int, str]
) -> AsyncGenerator[Begun | dict[str, Any], None]:
    async with scheduler.hold(plan.model_id) as held:
        plan, first, prompt_tokens = await _begin(held, plan)
        try:
            yield Begun(prompt_tokens)
            chunks = chunk_stream(
                plan.responder(),
                _generations(held, plan, first),
                record,
                include_usage=plan.include_usage,
                shaper=plan.tools.shaper,
                stop_sequences=stop_sequences,
            )
            async with contextlib.aclosing(chunks):  # closed early: its generation is cancelled first
                async for chunk in chunks:
                    yield chunk
        finally:
            first.cancel()  # closed before its chunks were read (harmless once it has finished)


async def _chunks(body: AsyncGenerator[Begun | dict[str, Any], None]) -> AsyncGenerator[dict[str, Any], None]:
    async with contextlib.aclosing(body):
        async for item in body:
            assert isinstance(item, dict)
            yield item


async def answer(plan: Plan, scheduler: Scheduler, record: RequestRecord | None) -> Answer:
    """The whole answer of a non-streamed request (cancel the task to stop it: the hold is released)."""
    async with scheduler.hold(plan.model_id) as held:
        plan, first, _ = await _begin(held, plan)
        responder = plan.responder()
        choices, prompt_tokens, completion_tokens = await collect_all(
            _generations(held, plan, first), record, plan.tools.shaper
        )
        body = responder.completion(choices, prompt_tokens, completion_tokens)
        stops = {i: c.stop_sequence for i, c in enumerate(choices) if c.stop_sequence is not None}
        return Answer(body, stops)


async def embed(scheduler: Scheduler, model_id: str, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
    async with scheduler.hold(model_id) as held:
        return await held.engine.embed(inputs)


async def tokenize(scheduler: Scheduler, model_id: str, text: str) -> list[int]:
    async with scheduler.hold(model_id, generate=False) as held:
        return await held.engine.tokenize(text)


async def detokenize(scheduler: Scheduler, model_id: str, tokens: list[int]) -> str:
    async with scheduler.hold(model_id, generate=False) as held:
        return await held.engine.detokenize(tokens)
