"""The gate every HTTP request passes: request id, body size limit, API keys, rate limits, and the
record that feeds the access log and metrics once the response (stream included) has ended."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access.keys import KeyRing, Principal, RateLimiter, presented_key
from gateway.errors import AUTHENTICATION, RATE_LIMIT, GatewayError
from gateway.observability.record import RequestRecord
from gateway.web.errors import error_response

CLIENT_PREFIXES = ("/v1/", "/extras/")
ADMIN_PREFIX = "/admin"


@dataclass
class Gate:
    """What the gate checks against; replaced in place when the configuration is reloaded."""

    keyring: KeyRing
    limiter: RateLimiter
    max_body_bytes: int
    log_content: bool


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type=AUTHENTICATION, code="invalid_api_key")


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate, on_finish: Callable[[RequestRecord], None]) -> None:
        self.app = app
        self.gate = gate
        self.on_finish = on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        client = scope.get("client")
        record = RequestRecord(
            request_id, scope["method"], scope["path"], f"{client[0]}:{client[1]}" if client else None
        )
        if self.gate.log_content:
            record.output = []
        scope.setdefault("state", {})["record"] = record

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            try:
                principal = self._admit(scope, headers)
            except GatewayError as error:
                await error_response(scope["path"], error)(scope, receive, send_with_id)
                return
            if principal is not None:
                record.key_id = principal.key_id
                scope["state"]["principal"] = principal
            await self.app(scope, self._limited(receive), send_with_id)
        finally:
            self.on_finish(record)

    def _admit(self, scope: Scope, headers: Headers) -> Principal | None:
        gate = self.gate
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > gate.max_body_bytes:
            raise body_too_large(gate.max_body_bytes)
        path: str = scope["path"]
        key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
        if path.startswith(ADMIN_PREFIX):
            if not gate.keyring.is_admin(key):
                raise _unauthorized("The admin endpoints need the admin key.")
            return None
        if not path.startswith(CLIENT_PREFIXES):
            return None  # /health, /metrics
        principal = gate.keyring.authenticate(key)
        if principal is None:
            raise _unauthorized(
                "Incorrect API key provided."
                if key
                else "Missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'."
            )
        wait = gate.limiter.check(principal)
        if wait is not None:
            raise GatewayError(
                429,
                f"Rate limit reached for key '{principal.key_id}' ({principal.rpm} requests per minute).",
                type=RATE_LIMIT,
                code="rate_limit_exceeded",
                retry_after=wait,
            )
        return principal

    def _limited(self, receive: Receive) -> Receive:
        limit = self.gate.max_body_bytes
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise body_too_large(limit)
            return message

        return receive_limited
