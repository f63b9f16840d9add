"""OpenAI's endpoints that use a model: chat and text completions, embeddings, and the tokenizer
helpers. Each reads parse → resolve → plan → run → frame; a remote model's request passes through."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.protocol import (
    check_vocabulary,
    parse_chat_request,
    parse_completion_request,
    parse_detokenize_request,
    parse_embedding_request,
    parse_tokenize_request,
)
from gateway.protocol.replies import ChatResponder, CompletionResponder, StreamEvents, embeddings_list
from gateway.serving import run
from gateway.serving.call import Call
from gateway.serving.plan import Plan, check_embedding, plan_chat, plan_completion
from gateway.serving.resolve import Remote, resolve, resolve_local
from gateway.web.context import call_of
from gateway.web.sse import respond, respond_remote, run_plan, unless_disconnected

ChatOrCompletion = ChatResponder | CompletionResponder


async def _answer(request: Request, call: Call, plan: Plan, responder: ChatOrCompletion) -> Response:
    """Run a plan and frame it in OpenAI's shape."""
    return respond(
        request,
        await run_plan(request, call, plan),
        lambda _: StreamEvents(responder, plan.include_usage),
        responder.completion,
    )


async def _pass_through(request: Request, call: Call, remote: Remote, path: str, raw: bytes, stream: bool) -> Response:
    """Relay a validated request to the model's servers. A client that goes away before the answer
    (or a stream's first byte) cancels the upstream request."""
    reply = await unless_disconnected(request, run.forward(call, remote.model_id, path, raw, stream))
    return respond_remote(request, reply)


async def chat_completions(request: Request) -> Response:
    raw = await request.body()
    chat = parse_chat_request(raw)
    call = call_of(request)
    target = resolve(call, chat.model)
    if isinstance(target, Remote):
        return await _pass_through(request, call, target, "chat/completions", raw, bool(chat.stream))
    call.note_chat(chat)
    plan = plan_chat(chat, target, call.scheduler.settings.gateway)
    tier = call.service_tier(plan.flex, chat.service_tier)
    responder = ChatResponder(plan.model_id, call.scheduler.settings.gateway.reasoning_field, service_tier=tier)
    return await _answer(request, call, plan, responder)


async def completions(request: Request) -> Response:
    raw = await request.body()
    body = parse_completion_request(raw)
    call = call_of(request)
    target = resolve(call, body.model)
    if isinstance(target, Remote):
        return await _pass_through(request, call, target, "completions", raw, bool(body.stream))
    plan = plan_completion(body, target, call.scheduler.settings.gateway)
    tier = call.service_tier(plan.flex, body.service_tier)
    return await _answer(request, call, plan, CompletionResponder(plan.model_id, echo=plan.echo, service_tier=tier))


async def embeddings(request: Request) -> Response:
    raw = await request.body()
    body = parse_embedding_request(raw)
    call = call_of(request)
    target = resolve(call, body.model)
    if isinstance(target, Remote):
        return await _pass_through(request, call, target, "embeddings", raw, False)
    check_embedding(body, target)
    vectors, tokens = await run.embed(call, target, body)
    return JSONResponse(embeddings_list(target.model_id, vectors, tokens, body.encoding_format))


async def tokenize(request: Request) -> Response:
    body = parse_tokenize_request(await request.body())
    call = call_of(request)
    model_id = resolve_local(call, body.model).model_id
    tokens = await run.tokenize(call, model_id, body.input)
    return JSONResponse({"model": model_id, "tokens": tokens, "count": len(tokens)})


async def detokenize(request: Request) -> Response:
    body = parse_detokenize_request(await request.body())
    call = call_of(request)
    view = resolve_local(call, body.model)
    check_vocabulary(body.tokens, view.facts.info.vocab_size, "tokens")
    text = await run.detokenize(call, view.model_id, body.tokens)
    return JSONResponse({"model": view.model_id, "text": text})
