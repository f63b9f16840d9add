"""Errors as HTTP responses, in the shape of the API a path belongs to (Anthropic's under
/v1/messages, else OpenAI's), and the handlers that give Starlette's own exceptions that shape."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects.anthropic import reply as anthropic
from gateway.errors import GatewayError, internal_error

log = logging.getLogger(__name__)
ANTHROPIC_PREFIX = "/v1/messages"


def error_response(path: str, error: GatewayError) -> JSONResponse:
    if path.startswith(ANTHROPIC_PREFIX):
        status = anthropic.error_status(error)
        return JSONResponse(anthropic.error_body(error), status_code=status, headers=error.headers())
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


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
