"""Runs a plan against a held model: hold, start, stream its chunks or fold them, release.

The hold is owned by one `async with` for the whole life of the answer, inside the stream's own
generator: `open_stream` takes its first step, which holds the model and starts the generation, so
every error up to there still raises with its own status (before the 200). Afterwards the generator
runs to its end, fails in-band, or is closed (`ChatStream.close`, when the client goes away or the
stream is dropped unread), and the `async with` releases the hold in every case. A non-streamed
answer is the same stream, folded.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from gateway.engine.base import Engine, Generation, GenerationParams, Started, completion_room
from gateway.errors import internal_error
from gateway.observability.record import RequestRecord
from gateway.protocol import EmbeddingRequest
from gateway.protocol.answer import Answer, Chunk
from gateway.scheduler import Hold, Scheduler, SlotView
from gateway.scheduler.fairness import Tenant
from gateway.serving.call import Call
from gateway.serving.images import load_images
from gateway.serving.plan import Plan
from gateway.serving.stream import chunk_stream, fold
from gateway.upstream.proxy import Reply


@dataclass(frozen=True)
class _Begun:
    """The model is held and the first generation has begun."""

    prompt_tokens: int


@dataclass(frozen=True)
class ChatStream:
    """A begun answer that owns its model's hold until it ends or is closed: its chunks, the usage
    last. A failure after the start is raised from the iteration."""

    chunks: AsyncGenerator[Chunk, None]
    prompt_tokens: int
    model: str
    _body: AsyncGenerator[_Begun | Chunk, None]

    async def close(self) -> None:
        """Stop reading: the generation is cancelled and the hold released (a no-op once ended)."""
        await self.chunks.aclose()
        await self._body.aclose()  # `chunks` never started runs no cleanup of its own


async def open_stream(call: Call, plan: Plan) -> ChatStream:
    """Hold the model and begin the answer; raises the errors that have a status of their own."""
    images = await load_images(plan.images, call.scheduler.settings.gateway.image_fetch) if plan.images else None
    body = _stream_in_hold(plan, call.scheduler, call.record, call.tenant(plan.flex), images)
    try:
        begun = await anext(body)
    except BaseException:
        await body.aclose()
        raise
    assert isinstance(begun, _Begun)
    return ChatStream(_chunks(body), begun.prompt_tokens, plan.model_id, body)


async def answer(call: Call, plan: Plan) -> Answer:
    """The whole answer of a non-streamed request: its stream, folded (cancel the task to stop it:
    the hold is released)."""
    stream = await open_stream(call, plan)
    try:
        return await fold(plan.model_id, stream.chunks)
    finally:
        await stream.close()


async def prompt_tokens(call: Call, plan: Plan) -> int:
    """The tokens a planned chat's prompt takes on its model (chat template and tools included),
    measured as a generation would: started, counted, and cancelled at once."""
    stream = await open_stream(call, plan)
    await stream.close()
    return stream.prompt_tokens


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


async def _begin(held: Hold, plan: Plan, images: list[dict[str, Any]] | None) -> tuple[Plan, Generation, int]:
    """The plan for the version held (with the chat's images), its later prompts checked, its first
    generation started."""
    plan = plan.for_version(held.view())
    if images:
        plan = replace(plan, generations=(replace(plan.generations[0], images=images), *plan.generations[1:]))
    n_ctx = held.entry.model.n_ctx
    for params in plan.generations[1:]:  # they start after the answer has begun: check them now
        tokens = len(await held.engine.tokenize(params.prompt or "")) + 1  # + BOS
        completion_room(tokens, n_ctx, params.n, params.max_tokens, "prompt")
    generation, prompt_tokens = await _start_held(held, plan.generations[0])
    return plan, generation, prompt_tokens


async def _start_held(held: Hold, params: GenerationParams) -> tuple[Generation, int]:
    """`start`, in a hold that may now be paused for a more urgent request (and resumed)."""
    generation, prompt_tokens = await start(held.engine, params)
    held.pausable(generation.pause, generation.resume)
    return generation, prompt_tokens


async def _generations(held: Hold, plan: Plan, first: Generation) -> AsyncIterator[tuple[int, Generation]]:
    """The first generation (already started), then the rest, each started when its turn comes;
    each with the index its choices are numbered from."""
    yield 0, first
    for position, params in enumerate(plan.generations[1:], start=1):
        generation, _ = await _start_held(held, params)
        yield position * params.n, generation


async def _stream_in_hold(
    plan: Plan, scheduler: Scheduler, record: RequestRecord | None, tenant: Tenant, images: list[dict[str, Any]] | None
) -> AsyncGenerator[_Begun | Chunk, None]:
    async with scheduler.hold(plan.model_id, tenant=tenant) as held:
        plan, first, prompt_tokens = await _begin(held, plan, images)
        read = False
        try:
            yield _Begun(prompt_tokens)
            read = True
            chunks = chunk_stream(_generations(held, plan, first), record, plan.shaper)
            async with contextlib.aclosing(chunks):  # closed early: its generation is cancelled first
                async for chunk in chunks:
                    yield chunk
        finally:
            first.cancel()  # closed before its chunks were read (harmless once it has finished)
            if read and record is not None and record.completion_tokens is None:
                # Cut before its usage (client gone, failure): the prompt was read, the pieces sent were made.
                record.finished(prompt_tokens, record.deltas)


async def _chunks(body: AsyncGenerator[_Begun | Chunk, None]) -> AsyncGenerator[Chunk, None]:
    async with contextlib.aclosing(body):
        async for item in body:
            assert not isinstance(item, _Begun)
            yield item


async def embed(call: Call, view: SlotView, body: EmbeddingRequest) -> tuple[list[list[float]], int]:
    """The vectors of the inputs, and the tokens they took."""
    async with call.scheduler.hold(view.model_id, tenant=call.tenant()) as held:
        vectors, tokens = await held.engine.embed(body.inputs)
    if call.record is not None:
        call.record.finished(tokens, 0)
    return vectors, tokens


async def tokenize(call: Call, model_id: str, text: str) -> list[int]:
    async with call.scheduler.hold(model_id, generate=False) as held:
        return await held.engine.tokenize(text)


async def detokenize(call: Call, model_id: str, tokens: list[int]) -> str:
    async with call.scheduler.hold(model_id, generate=False) as held:
        return await held.engine.detokenize(tokens)


async def forward(call: Call, model_id: str, path: str, body: bytes, stream: bool) -> Reply:
    """A remote model's request, relayed to its servers as the client sent it (failover before the
    first byte)."""
    return await call.upstreams.forward(model_id, path, json.loads(body), stream=stream, record=call.record)
