"""Endpoints that describe the gateway: health, readiness, metrics, the model list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.observability.metrics import CONTENT_TYPE
from gateway.serving.resolve import Remote, resolve
from gateway.web.context import call_of, principal_of, services_of
from gateway.web.models import card, remote_card


async def health(request: Request) -> Response:
    """Alive. While a backend of the lasting state is unreachable the gateway still serves (limits
    counted per replica, usage rows spilled in memory): `degraded` names it."""
    figures = services_of(request).store_figures()
    down = [name for name, up in figures.up.items() if not up]
    body: dict[str, object] = {"status": "ok"}
    if down:
        body.update(degraded=down, usage_rows_pending=figures.usage_pending)
    return JSONResponse(body)


async def ready(request: Request) -> Response:
    pending = services_of(request).scheduler.pinned_not_loaded()
    if pending:
        return JSONResponse({"status": "loading", "pinned_not_loaded": pending}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    return Response(services_of(request).metrics.exposition(), media_type=CONTENT_TYPE)


async def list_models(request: Request) -> Response:
    principal, services = principal_of(request), services_of(request)
    cards = [card(v) for v in services.scheduler.views() if principal.may_use(v.model_id)]
    upstreams = services.upstreams
    cards += [remote_card(upstreams, m) for m in upstreams.models if principal.may_use(m)]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    call = call_of(request)
    target = resolve(call, request.path_params["model"])
    if isinstance(target, Remote):
        return JSONResponse(remote_card(call.upstreams, target.model_id))
    return JSONResponse(card(target))
