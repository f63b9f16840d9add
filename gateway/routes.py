"""HTTP endpoints: parse, resolve, lease, and hand over to the engine and the stream encoder."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import responses, toolprompt
from gateway.auth import ANONYMOUS, Principal
from gateway.engine.base import (
    Engine,
    Generation,
    GenerationParams,
    Started,
    chat_params,
    completion_params,
    generic_auto,
)
from gateway.errors import context_length_exceeded, internal_error, invalid_request, model_not_found
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.protocol import (
    ChatCompletionRequest,
    check_vocabulary,
    parse_chat_request,
    parse_completion_request,
    parse_detokenize_request,
    parse_embedding_request,
    parse_tokenize_request,
)
from gateway.record import RequestRecord
from gateway.registry import Lease, Registry, Slot
from gateway.responses import ChatResponder, CompletionResponder, model_card
from gateway.streaming import chunk_stream, collect_all, sse_data
from gateway.tools import AutoCall, NamedCall, RequiredCall, Shaper
from gateway.upstream.proxy import Upstreams

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's name for it; only ever seen in the access log
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_PING_SECONDS = 15


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def principal_of(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


def _record(request: Request) -> RequestRecord | None:
    return getattr(request.state, "record", None)


def upstreams_of(request: Request) -> Upstreams:
    upstreams: Upstreams = request.app.state.upstreams
    return upstreams


def _remote(request: Request, name: str) -> str | None:
    """The id of the remote model (served by `upstream` servers) a name refers to, or None for a
    local one. The hook that routes remote models around the registry: no worker, no memory."""
    upstreams = upstreams_of(request)
    model_id = upstreams.settings.resolve(name)
    if model_id is None or upstreams.get(model_id) is None:
        return None
    if not principal_of(request).may_use(model_id):
        raise model_not_found(name)
    record = _record(request)
    if record is not None:
        record.model = model_id
    return model_id


async def _pass_through(request: Request, model_id: str, path: str, body: bytes, stream: bool) -> Response:
    """Relay a validated request to the model's servers (failover before the first byte)."""
    reply = await upstreams_of(request).forward(
        model_id, path, json.loads(body), stream=stream, record=_record(request)
    )
    if reply.events is not None:
        return sse(request, reply.events, BackgroundTask(reply.close) if reply.close else None)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def resolve_for(request: Request, name: str) -> Slot:
    """The model a name refers to, as far as this client may know: a model outside its key's
    allow-list is reported as not existing."""
    if _remote(request, name) is not None:
        raise invalid_request(
            f"Model '{name}' is served by another server: this endpoint works with local models only.",
            param="model",
        )
    slot = registry_of(request).resolve(name)
    if not principal_of(request).may_use(slot.model_id):
        raise model_not_found(name)
    return slot


def _target(request: Request, name: str) -> Slot:
    """The model a generating request names, noted in its access-log record."""
    slot = resolve_for(request, name)
    record = _record(request)
    if record is not None:
        record.model = slot.model_id
    return slot


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    pending = registry_of(request).pinned_not_loaded()
    if pending:
        return JSONResponse({"status": "loading", "pinned_not_loaded": pending}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    collectors: Metrics = request.app.state.metrics
    return Response(collectors.exposition(), media_type=CONTENT_TYPE)


def native_tools(slot: Slot) -> bool:
    """Whether the model's own chat template presents tools (else the generic tool prompt does)."""
    return toolprompt.native_tools(
        slot.entry.model.chat_format, slot.facts.info.metadata.get("tokenizer.chat_template")
    )


def _card(slot: Slot) -> dict[str, object]:
    path = slot.facts.info.path
    card = model_card(
        slot.model_id, int(path.stat().st_mtime) if path.exists() else 0, slot.state.value, slot.memory_bytes
    )
    card["aliases"] = list(slot.entry.aliases)
    if not slot.entry.embedding:
        card["tool_template"] = "native" if native_tools(slot) else "generic"
    return card


def _remote_card(request: Request, model_id: str) -> dict[str, object]:
    card = model_card(model_id, 0, "loaded", 0)  # always available here; nothing is loaded locally
    card["aliases"] = list(upstreams_of(request).settings.upstreams[model_id].aliases)
    return card


async def list_models(request: Request) -> Response:
    principal = principal_of(request)
    cards = [_card(s) for s in registry_of(request).slots() if principal.may_use(s.model_id)]
    cards += [_remote_card(request, m) for m in upstreams_of(request).models if principal.may_use(m)]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    remote = _remote(request, name)
    if remote is not None:
        return JSONResponse(_remote_card(request, remote))
    return JSONResponse(_card(resolve_for(request, name)))


async def _hold(registry: Registry, model_id: str) -> Lease:
    """A lease on a loaded model plus its share of the CPU, for one generating request."""
    lease = await registry.acquire(model_id)
    try:
        await lease.reserve_cpu()
    except BaseException:
        lease.release()
        raise
    return lease


async def _start(lease: Lease, params: GenerationParams) -> tuple[Generation, int]:
    """Send a generation and wait until it has begun; returns it and its prompt's token count.
    Rendering, tokenizing and the context check happen before that, so their errors are still
    answered with their own status, not in a 200 stream."""
    generation = lease.engine.generate(params)
    try:
        first = await generation.next_event()
        if not isinstance(first, Started):
            raise internal_error(f"unexpected first event {type(first).__name__}")
    except BaseException:
        generation.cancel()
        raise
    return generation, first.prompt_tokens


def sse_event(name: str, data: str) -> dict[str, str]:
    """A frame with an `event:` line (Anthropic's and the Responses API's streams name their events)."""
    return {"event": name, "data": data}


def sse(request: Request, events: AsyncIterator[Any], after: BackgroundTask | None = None) -> Response:
    """An SSE response: `events` yields `data:` payloads (str) or `sse_event` frames; `after` runs
    once the response has finished."""
    return EventSourceResponse(
        events,
        background=after,
        headers=STREAM_HEADERS,
        sep="\n",
        ping=SSE_PING_SECONDS,
        shutdown_event=anyio.Event(),
        shutdown_grace_period=request.app.state.shutdown_grace,
    )


async def _choices(
    lease: Lease, first: Generation, plan: list[GenerationParams]
) -> AsyncIterator[tuple[int, Generation]]:
    """The first generation (already started), then the rest, each started when its turn comes;
    each with the index its choices are numbered from."""
    yield 0, first
    for position, params in enumerate(plan[1:], start=1):
        generation, _ = await _start(lease, params)
        yield position * params.n, generation


@dataclass
class ChatStream:
    """A started stream: OpenAI chat chunks (dicts), ending with the usage chunk when asked for.
    A failure after the start is raised from the iteration; the model is freed when it ends, or by
    `close()` for a stream that is dropped unread."""

    chunks: AsyncGenerator[dict[str, Any], None]
    prompt_tokens: int
    model: str
    _abandon: Callable[[], None]

    async def close(self) -> None:
        await self.chunks.aclose()
        self._abandon()  # a generator never iterated runs no `finally`: cancel and release here


# What the chat path gives back: a stream, the finished completion, or None (the client went away).
Outcome = ChatStream | dict[str, Any] | None


async def _run(
    request: Request,
    lease: Lease,
    responder: ChatResponder | CompletionResponder,
    plan: list[GenerationParams],
    *,
    stream: bool,
    include_usage: bool,
    shaper: Callable[[], Shaper] | None = None,
) -> Outcome:
    """Start the first generation (errors still get their own status), then stream or collect all."""
    record = _record(request)
    try:
        first, prompt_tokens = await _start(lease, plan[0])
    except BaseException:
        lease.release()
        raise
    generations = _choices(lease, first, plan)
    if stream:
        chunks = chunk_stream(responder, generations, lease, record, include_usage=include_usage, shaper=shaper)

        def abandon() -> None:
            first.cancel()
            lease.release()

        return ChatStream(chunks, prompt_tokens, lease.model_id, abandon)
    try:
        answer = await _unless_disconnected(request, collect_all(generations, record, shaper))
    finally:
        lease.release()
    if answer is None:
        return None
    choices, prompt_tokens, completion_tokens = answer
    return responder.completion(choices, prompt_tokens, completion_tokens)


def _openai_answer(request: Request, outcome: Outcome) -> Response:
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the access log does
    if isinstance(outcome, ChatStream):
        return sse(request, sse_data(outcome.chunks))
    return JSONResponse(outcome)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, or cancel it (and so its generation) when the client goes away first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
        return await task  # could not watch the connection: just finish the work
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def chat_completions(request: Request) -> Response:
    body = await request.body()
    chat = parse_chat_request(body)
    remote = _remote(request, chat.model)
    if remote is not None:
        return await _pass_through(request, remote, "chat/completions", body, bool(chat.stream))
    return _openai_answer(request, await run_chat(request, chat))


async def run_chat(request: Request, chat: ChatCompletionRequest) -> Outcome:
    """The chat path every dialect shares (chat completions, Anthropic messages, Responses): resolve
    the model for this client, check it can chat, hold it (queueing, budgets), and start the
    generation; every failure so far is raised, before any response is sent. Then the stream of chat
    chunks (`chat.stream`), or the finished `chat.completion` dict, or None when the client went away
    before a non-streamed answer was ready."""
    slot = _target(request, chat.model)
    record = _record(request)
    if record is not None and record.output is not None:  # log_content is on
        record.messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    _generative(slot)
    check_vocabulary(chat.token_ids(), slot.facts.info.vocab_size, "logit_bias")
    if slot.entry.model.chat_format is None and not slot.facts.has_chat_template:
        raise invalid_request(
            f"Model '{slot.model_id}' has no chat template in its GGUF and no model.chat_format in "
            "models.yaml, so chat messages cannot be formatted for it.",
            param="model",
            code="chat_template_missing",
        )
    registry = registry_of(request)
    lease = await _hold(registry, slot.model_id)
    params = chat_params(chat, lease.entry, registry.settings.gateway.stream_interval, native_tools=native_tools(slot))
    return await _run(
        request,
        lease,
        ChatResponder(lease.model_id),
        [params],
        stream=bool(chat.stream),
        include_usage=chat.include_usage,
        shaper=_shaper(chat, native_tools(slot)),
    )


async def prompt_tokens(request: Request, chat: ChatCompletionRequest) -> int:
    """The tokens a chat's prompt takes on its model (chat template and tools included), measured as a
    generation would: started, counted, and cancelled at once."""
    outcome = await run_chat(request, chat.model_copy(update={"stream": True, "max_tokens": 1}))
    if not isinstance(outcome, ChatStream):
        raise internal_error("a streamed chat gave no stream")
    await outcome.close()
    return outcome.prompt_tokens


def _shaper(chat: ChatCompletionRequest, native: bool) -> Callable[[], Shaper] | None:
    """How each choice's text becomes content and tool calls."""
    mode = chat.tool_mode
    if mode == "none":
        return None
    if mode == "named":
        name = chat.forced_tool or ""
        return lambda: NamedCall(name)
    if mode == "required":
        return RequiredCall
    names = {t.function.name for t in chat.tools or []}
    if generic_auto(chat, native):
        return lambda: toolprompt.GenericReply(names)
    return lambda: AutoCall(names)


async def completions(request: Request) -> Response:
    """Legacy text completions: the prompt is sent as is, without a chat template. Choices are
    n per prompt, prompt by prompt."""
    raw = await request.body()
    body = parse_completion_request(raw)
    remote = _remote(request, body.model)
    if remote is not None:
        return await _pass_through(request, remote, "completions", raw, bool(body.stream))
    slot = _target(request, body.model)
    _generative(slot)
    check_vocabulary(body.token_ids(), slot.facts.info.vocab_size, "logit_bias")
    registry = registry_of(request)
    interval = registry.settings.gateway.stream_interval
    prompts = body.prompts
    lease = await _hold(registry, slot.model_id)
    try:
        # Later prompts start after the response has begun: check they fit before it does.
        for prompt in prompts[1:]:
            count = len(await lease.engine.tokenize(prompt)) + 1  # + BOS
            if count >= lease.entry.model.n_ctx:
                raise context_length_exceeded(count, lease.entry.model.n_ctx, "prompt")
    except BaseException:
        lease.release()
        raise
    plan = [completion_params(body, prompt, lease.entry, interval) for prompt in prompts]
    echo = [p for p in prompts for _ in range(body.choices)] if body.echo else None
    outcome = await _run(
        request,
        lease,
        CompletionResponder(lease.model_id, echo=echo),
        plan,
        stream=bool(body.stream),
        include_usage=body.include_usage,
    )
    return _openai_answer(request, outcome)


def _generative(slot: Slot) -> None:
    if slot.entry.embedding:
        raise invalid_request(
            f"Model '{slot.model_id}' is an embedding model: use /v1/embeddings with it.", param="model"
        )


async def embeddings(request: Request) -> Response:
    raw = await request.body()
    body = parse_embedding_request(raw)
    remote = _remote(request, body.model)
    if remote is not None:
        return await _pass_through(request, remote, "embeddings", raw, False)
    record = _record(request)
    slot = _target(request, body.model)
    if not slot.entry.embedding:
        raise invalid_request(
            f"Model '{slot.model_id}' is not an embedding model (set embedding: true in models.yaml).", param="model"
        )
    size = slot.facts.info.embedding_length
    if body.dimensions is not None and body.dimensions != size:
        raise invalid_request(
            f"Model '{slot.model_id}' makes {size}-dimensional embeddings and cannot shorten them; "
            "omit 'dimensions' or set it to that.",
            param="dimensions",
        )
    check_vocabulary(body.token_ids(), slot.facts.info.vocab_size, "input")
    lease = await _hold(registry_of(request), slot.model_id)
    try:
        vectors, tokens = await lease.engine.embed(body.inputs)
    finally:
        lease.release()
    if record is not None:
        record.finished(tokens, 0)
    return JSONResponse(responses.embeddings(slot.model_id, vectors, tokens, body.encoding_format))


async def _on_model(request: Request, name: str, use: Callable[[Engine], Awaitable[T]]) -> tuple[str, T]:
    """Run a quick call on a model's engine (loading it if needed), holding it meanwhile."""
    slot = resolve_for(request, name)
    lease = await registry_of(request).acquire(slot.model_id)
    try:
        return slot.model_id, await use(lease.engine)
    finally:
        lease.release()


async def tokenize(request: Request) -> Response:
    body = parse_tokenize_request(await request.body())
    model_id, tokens = await _on_model(request, body.model, lambda engine: engine.tokenize(body.input))
    return JSONResponse({"model": model_id, "tokens": tokens, "count": len(tokens)})


async def detokenize(request: Request) -> Response:
    body = parse_detokenize_request(await request.body())
    check_vocabulary(body.tokens, resolve_for(request, body.model).facts.info.vocab_size, "tokens")
    model_id, text = await _on_model(request, body.model, lambda engine: engine.detokenize(body.tokens))
    return JSONResponse({"model": model_id, "text": text})
