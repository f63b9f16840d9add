"""Endpoints that use a model: parse, plan, dispatch. Everything a request will do is decided in
`plan`, and run against a held model in `dispatch`; remote models pass through to their servers."""

from __future__ import annotations

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import dispatch, responses
from gateway.dispatch import Answer, ChatStream
from gateway.errors import internal_error, invalid_request, model_not_found
from gateway.plan import Plan, check_embedding, plan_chat, plan_completion
from gateway.protocol import (
    ChatCompletionRequest,
    check_vocabulary,
    parse_chat_request,
    parse_completion_request,
    parse_detokenize_request,
    parse_embedding_request,
    parse_tokenize_request,
)
from gateway.remote_routes import pass_through, remote_model
from gateway.scheduler import SlotView
from gateway.streaming import sse_data
from gateway.web import CLIENT_CLOSED_REQUEST, principal_of, record_of, scheduler_of, sse, unless_disconnected

# What a planned request gives back: a begun stream, the finished answer, or None (the client went away).
Outcome = ChatStream | Answer | None


def resolve_for(request: Request, name: str) -> SlotView:
    """The local model a name refers to, as far as this client may know: a model outside its key's
    allow-list is reported as not existing. Noted in the request's access-log record."""
    if remote_model(request, name) is not None:
        raise invalid_request(
            f"Model '{name}' is served by another server: this endpoint works with local models only.",
            param="model",
        )
    view = scheduler_of(request).view(name)
    if not principal_of(request).may_use(view.model_id):
        raise model_not_found(name)
    record = record_of(request)
    if record is not None:
        record.model = view.model_id
    return view


async def run_plan(request: Request, plan: Plan) -> Outcome:
    """Hold the model and begin (streamed) or finish (not streamed) the planned generations; every
    error until the stream has begun is raised, before any response is sent."""
    scheduler, record = scheduler_of(request), record_of(request)
    if plan.stream:
        return await dispatch.open_stream(plan, scheduler, record)
    return await unless_disconnected(request, dispatch.answer(plan, scheduler, record))


def openai_answer(request: Request, outcome: Outcome) -> Response:
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the access log does
    if isinstance(outcome, ChatStream):
        return sse(request, sse_data(outcome.chunks), BackgroundTask(outcome.close))  # closed even if never read
    return JSONResponse(outcome.body)


async def run_chat(request: Request, chat: ChatCompletionRequest) -> Outcome:
    """The chat path every dialect shares (chat completions, Anthropic messages, Responses): the
    local model for this client, the plan, then `run_plan`. A stream returned is the caller's to
    read or close (`ChatStream.close`, e.g. in its response's background task)."""
    record = record_of(request)
    view = resolve_for(request, chat.model)
    if record is not None and record.output is not None:  # log_content is on
        record.messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    return await run_plan(request, plan_chat(chat, view, scheduler_of(request).settings.gateway))


async def prompt_tokens(request: Request, chat: ChatCompletionRequest) -> int:
    """The tokens a chat's prompt takes on its model (chat template and tools included), measured as a
    generation would: started, counted, and cancelled at once."""
    outcome = await run_chat(request, chat.model_copy(update={"stream": True, "max_tokens": 1}))
    if not isinstance(outcome, ChatStream):
        raise internal_error("a streamed chat gave no stream")
    await outcome.close()
    return outcome.prompt_tokens


async def chat_completions(request: Request) -> Response:
    raw = await request.body()
    chat = parse_chat_request(raw)
    remote = remote_model(request, chat.model)
    if remote is not None:
        return await pass_through(request, remote, "chat/completions", raw, bool(chat.stream))
    return openai_answer(request, await run_chat(request, chat))


async def completions(request: Request) -> Response:
    raw = await request.body()
    body = parse_completion_request(raw)
    remote = remote_model(request, body.model)
    if remote is not None:
        return await pass_through(request, remote, "completions", raw, bool(body.stream))
    view = resolve_for(request, body.model)
    plan = plan_completion(body, view, scheduler_of(request).settings.gateway)
    return openai_answer(request, await run_plan(request, plan))


async def embeddings(request: Request) -> Response:
    raw = await request.body()
    body = parse_embedding_request(raw)
    remote = remote_model(request, body.model)
    if remote is not None:
        return await pass_through(request, remote, "embeddings", raw, False)
    view = resolve_for(request, body.model)
    check_embedding(body, view)
    vectors, tokens = await dispatch.embed(scheduler_of(request), view.model_id, body.inputs)
    record = record_of(request)
    if record is not None:
        record.finished(tokens, 0)
    return JSONResponse(responses.embeddings(view.model_id, vectors, tokens, body.encoding_format))


async def tokenize(request: Request) -> Response:
    body = parse_tokenize_request(await request.body())
    model_id = resolve_for(request, body.model).model_id
    tokens = await dispatch.tokenize(scheduler_of(request), model_id, body.input)
    return JSONResponse({"model": model_id, "tokens": tokens, "count": len(tokens)})


async def detokenize(request: Request) -> Response:
    body = parse_detokenize_request(await request.body())
    view = resolve_for(request, body.model)
    check_vocabulary(body.tokens, view.facts.info.vocab_size, "tokens")
    model_id = view.model_id
    text = await dispatch.detokenize(scheduler_of(request), model_id, body.tokens)
    return JSONResponse({"model": model_id, "text": text})
