"""HTTP endpoints: parse, resolve, lease, and hand over to the engine and the stream encoder."""

from __future__ import annotations

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.engine.base import Started, chat_params
from gateway.errors import internal_error, invalid_request, model_not_found
from gateway.protocol import ChatResponder, model_card, parse_chat_request
from gateway.registry import Registry, Slot
from gateway.streaming import chat_stream, client_finish_reason, collect

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_PING_SECONDS = 15


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _card(slot: Slot) -> dict[str, object]:
    card = model_card(
        slot.model_id,
        int(slot.facts.info.path.stat().st_mtime) if slot.facts.info.path.exists() else 0,
        slot.state.value,
        slot.memory_bytes,
    )
    card["aliases"] = list(slot.entry.aliases)
    return card


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_card(s) for s in _registry(request).slots()]})


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    slot = _registry(request).resolve(name)
    if slot.model_id != name and name not in slot.entry.aliases:
        raise model_not_found(name)
    return JSONResponse(_card(slot))


async def chat_completions(request: Request) -> Response:
    chat = parse_chat_request(await request.body())
    registry = _registry(request)
    slot = registry.resolve(chat.model)
    if slot.entry.model.chat_format is None and not slot.facts.has_chat_template:
        raise invalid_request(
            f"Model '{slot.model_id}' has no chat template in its GGUF and no model.chat_format in "
            "models.yaml, so chat messages cannot be formatted for it.",
            param="model",
            code="chat_template_missing",
        )
    lease = await registry.acquire(chat.model)
    try:
        await lease.reserve_cpu()
        interval = registry.settings.gateway.stream_interval
        generation = lease.engine.generate(chat_params(chat, lease.entry, interval))
        try:
            # Rendering, tokenizing and the context check happen before this event: errors are
            # still answered with their own status, not inside a 200 stream.
            first = await generation.next_event()
        except BaseException:
            generation.cancel()
            raise
        if not isinstance(first, Started):
            raise internal_error(f"unexpected first event {type(first).__name__}")
    except BaseException:
        lease.release()
        raise

    responder = ChatResponder(lease.model_id)
    if chat.stream:
        return EventSourceResponse(
            chat_stream(responder, generation, lease, include_usage=chat.include_usage),
            headers=STREAM_HEADERS,
            sep="\n",
            ping=SSE_PING_SECONDS,
            shutdown_event=anyio.Event(),
            shutdown_grace_period=request.app.state.shutdown_grace,
        )
    try:
        text, finished = await collect(generation)
    finally:
        generation.cancel()
        lease.release()
    return JSONResponse(
        responder.completion(
            text,
            client_finish_reason(finished.finish_reason),
            finished.prompt_tokens,
            finished.completion_tokens,
        )
    )
