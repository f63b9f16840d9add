"""The gate every HTTP request passes: request id, body size limit, API keys, a key's limits (with
the x-ratelimit headers on every response of a limited key), and the record that feeds the access
log, metrics and usage ledger once the response (stream included) has ended."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access.estimate import estimate
from gateway.access.keys import KeyRing, Principal, presented_key
from gateway.access.limits import Admission, Limiter, Ticket
from gateway.errors import AUTHENTICATION, GatewayError
from gateway.observability.record import RequestRecord
from gateway.web.errors import error_response

CLIENT_PREFIXES = ("/v1/", "/extras/")
ADMIN_PREFIX = "/admin"


@dataclass
class Gate:
    """What the gate checks against; replaced in place when the configuration is reloaded."""

    keyring: KeyRing
    limiter: Limiter
    max_body_bytes: int
    log_content: bool


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type=AUTHENTICATION, code="invalid_api_key")


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate, on_finish: Callable[[RequestRecord, Ticket | None], None]) -> None:
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
        added = [(b"x-request-id", request_id.encode("latin-1"))]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        ticket = None
        try:
            try:
                principal = self._admit(scope, headers)
                if principal is not None:
                    record.key_id = principal.key_id
                    scope["state"]["principal"] = principal
                    if principal.limited:
                        receive, admission = await self._take(scope, receive, principal)
                        added += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in admission.headers]
                        if admission.error is not None:
                            raise admission.error
                        ticket = admission.ticket
            except GatewayError as error:
                await error_response(scope["path"], error)(scope, receive, send_with_id)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        finally:
            self.on_finish(record, ticket)

    async def _take(self, scope: Scope, receive: Receive, principal: Principal) -> tuple[Receive, Admission]:
        """Admit a limited key's request with what it may cost, read from its body (which is then
        replayed to the application)."""
        tokens = 0
        if scope["method"] == "POST" and (principal.tpm is not None or principal.quota is not None):
            body, receive = await self._buffered(receive)
            tokens = estimate(body)
        return receive, await self.gate.limiter.admit(principal, tokens)

    async def _buffered(self, receive: Receive) -> tuple[bytes, Receive]:
        """The whole body (within the size limit), and a receive that hands it over again."""
        limit = self.gate.max_body_bytes
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                raise body_too_large(limit)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return body, replay

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
