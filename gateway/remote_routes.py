"""Models served by other servers (`upstream:` entries): routed around the scheduler, no worker, no memory."""

from __future__ import annotations

import json

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import model_not_found
from gateway.responses import model_card
from gateway.web import CLIENT_CLOSED_REQUEST, principal_of, record_of, sse, unless_disconnected, upstreams_of


def remote_model(request: Request, name: str) -> str | None:
    """The id of the remote model a name refers to (noted in the access-log record), or None for a
    local one; 404 for a remote model outside the client's key's allow-list."""
    upstreams = upstreams_of(request)
    model_id = upstreams.settings.resolve(name)
    if model_id is None or upstreams.get(model_id) is None:
        return None
    if not principal_of(request).may_use(model_id):
        raise model_not_found(name)
    record = record_of(request)
    if record is not None:
        record.model = model_id
    return model_id


async def pass_through(request: Request, model_id: str, path: str, body: bytes, stream: bool) -> Response:
    """Relay a validated request to the model's servers (failover before the first byte). A client
    that goes away before the answer (or a stream's first byte) cancels the upstream request."""
    forward = upstreams_of(request).forward(model_id, path, json.loads(body), stream=stream, record=record_of(request))
    reply = await unless_disconnected(request, forward)
    if reply is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the access log does
    if reply.events is not None:
        return sse(request, reply.events, BackgroundTask(reply.close) if reply.close else None)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def remote_card(request: Request, model_id: str) -> dict[str, object]:
    card = model_card(model_id, 0, "loaded", 0)  # always available here; nothing is loaded locally
    card["aliases"] = list(upstreams_of(request).settings.upstreams[model_id].aliases)
    return card
