"""What the application serves: its routes, the endpoint labels metrics use for them, and the
handlers that turn Starlette's own exceptions into OpenAI-shaped errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin, info_routes, routes
from gateway.dialects import anthropic_routes, responses_routes
from gateway.errors import GatewayError, internal_error
from gateway.middleware import error_response

log = logging.getLogger(__name__)

# Paths as metric labels: fixed names, so unknown paths cannot blow up the label set.
_ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/extras/tokenize",
    "/extras/detokenize",
    "/v1/models",
    "/health",
    "/health/ready",
    "/metrics",
    "/admin/models",
    "/admin/reload",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
}


def endpoint_label(path: str) -> str:
    if path in _ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    if path.startswith("/admin/models/"):
        return "/admin/models/{model}/" + path.rsplit("/", 1)[-1]
    return "other"


def route_table() -> list[Route]:
    return [
        Route("/health", info_routes.health, methods=["GET"]),
        Route("/health/ready", info_routes.ready, methods=["GET"]),
        Route("/metrics", info_routes.metrics, methods=["GET"]),
        Route("/v1/models", info_routes.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", info_routes.get_model, methods=["GET"]),
        Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", routes.completions, methods=["POST"]),
        Route("/v1/embeddings", routes.embeddings, methods=["POST"]),
        Route("/v1/messages", anthropic_routes.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic_routes.count_tokens, methods=["POST"]),
        Route("/v1/responses", responses_routes.create, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses_routes.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses_routes.delete, methods=["DELETE"]),
        Route("/extras/tokenize", routes.tokenize, methods=["POST"]),
        Route("/extras/detokenize", routes.detokenize, methods=["POST"]),
        Route("/admin/models", admin.list_running, methods=["GET"]),
        Route("/admin/models/{model:path}/load", admin.load, methods=["POST"]),
        Route("/admin/models/{model:path}/unload", admin.unload, methods=["POST"]),
        Route("/admin/reload", admin.reload, methods=["POST"]),
    ]


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = GatewayError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code)
    response = error_response(request.url.path, error)
    response.headers.update(exc.headers or {})
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, internal_error(type(exc).__name__))


def exception_handlers() -> dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]:
    return {
        GatewayError: _gateway_error,
        HTTPException: _http_error,
        Exception: _unexpected_error,
    }
