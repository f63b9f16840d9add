"""The browser console: static files served at /ui/, and / redirected there.

The page holds no data of its own: it calls the API with the key its user gives it, so it can do
nothing that key could not do through the API. The files themselves are public."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access.keys import presented_key
from gateway.web.context import services_of

FILES = Path(__file__).parent / "ui"
# Only the page's own scripts, styles and API calls; no inline script, no other origin, no framing.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)


async def session(request: Request) -> Response:
    """What the presented key may do (use models, administer), so the page shows only what works and
    does not learn it from failed calls; it tells nothing about any other key."""
    keyring = services_of(request).gate.keyring
    key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    principal = keyring.authenticate(key)
    return JSONResponse(
        {
            "keys_required": keyring.required or not keyring.is_admin(None),
            "key_id": None if principal is None else principal.key_id,
            "models": principal is not None,
            "admin": keyring.is_admin(key),
        },
        headers={"cache-control": "no-store"},
    )


class _Guarded:
    """Adds the content security policy (and no sniffing, no caching of a stale app) to each file."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"cache-control", b"no-cache"),
                ]
            await send(message)

        await self.app(scope, receive, send_guarded)


def console_routes() -> list[BaseRoute]:
    return [
        Route("/", _to_console, methods=["GET"]),
        Route("/ui/session", session, methods=["GET"]),
        Mount("/ui", app=_Guarded(StaticFiles(directory=FILES, html=True)), name="console"),
    ]
