"""HTTP endpoints: parse, resolve, lease, and hand over to the engine and the stream encoder."""

from __future__ import annotations

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import ANONYMOUS, Principal
from gateway.engine.base import Started, chat_params
from gateway.errors import internal_error, invalid_request, model_not_found
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.protocol import ChatResponder, model_card, parse_chat_request
from gateway.record import RequestRecord
from gateway.registry import Registry, Slot
from gateway.streaming import chat_stream, client_finish_reason, collect

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_PING_SECONDS = 15


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _principal(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


def _record(request: Request) -> RequestRecord | None:
    return getattr(request.state, "record", None)


def resolve_for(request: Request, name: str) -> Slot:
    """The model a name refers to, as far as this client may know: a model outside its key's
    allow-list is reported as not existing."""
    slot = registry_of(request).resolve(name)
    if not _principal(request).may_use(slot.model_id):
        raise model_not_found(name)
    return slot


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    registry = registry_of(request)
    pending = [s.model_id for s in registry.slots() if s.entry.pinned and s.state.value != "loaded"]
    if pending:
        return JSONResponse({"status": "loading", "pinned_not_loaded": pending}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    collectors: Metrics = request.app.state.metrics
    return Response(collectors.exposition(), media_type=CONTENT_TYPE)


def _card(slot: Slot) -> dict[str, object]:
    path = slot.facts.info.path
    card = model_card(
        slot.model_id, int(path.stat().st_mtime) if path.exists() else 0, slot.state.value, slot.memory_bytes
    )
    card["aliases"] = list(slot.entry.aliases)
    return card


async def list_models(request: Request) -> Response:
    principal = _principal(request)
    cards = [_card(s) for s in registry_of(request).slots() if principal.may_use(s.model_id)]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    return JSONResponse(_card(resolve_for(request, request.path_params["model"])))


async def chat_completions(request: Request) -> Response:
    chat = parse_chat_request(await request.body())
    record = _record(request)
    slot = resolve_for(request, chat.model)
    if record is not None:
        record.model = slot.model_id
        if record.output is not None:  # log_content is on
            record.messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    if slot.entry.model.chat_format is None and not slot.facts.has_chat_template:
        raise invalid_request(
            f"Model '{slot.model_id}' has no chat template in its GGUF and no model.chat_format in "
            "models.yaml, so chat messages cannot be formatted for it.",
            param="model",
            code="chat_template_missing",
        )
    registry = registry_of(request)
    lease = await registry.acquire(slot.model_id)
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
            chat_stream(responder, generation, lease, record, include_usage=chat.include_usage),
            headers=STREAM_HEADERS,
            sep="\n",
            ping=SSE_PING_SECONDS,
            shutdown_event=anyio.Event(),
            shutdown_grace_period=request.app.state.shutdown_grace,
        )
    try:
        text, finished = await collect(generation, record)
    finally:
        generation.cancel()
        lease.release()
    return JSONResponse(
        responder.completion(
            text, client_finish_reason(finished.finish_reason), finished.prompt_tokens, finished.completion_tokens
        )
    )
