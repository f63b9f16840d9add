"""Endpoints that describe the gateway: health, readiness, metrics, the model list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dialects.anthropic import reply as anthropic
from gateway.dialects.anthropic.models import model_object, model_page
from gateway.errors import GatewayError
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


def _anthropic(request: Request) -> bool:
    """Anthropic's SDKs send `anthropic-version` on every request: the model list answers in its shape."""
    return "anthropic-version" in request.headers


async def list_models(request: Request) -> Response:
    principal, services = principal_of(request), services_of(request)
    cards = [card(v) for v in services.scheduler.views() if principal.may_use(v.model_id)]
    upstreams = services.upstreams
    cards += [remote_card(upstreams, m) for m in upstreams.models if principal.may_use(m)]
    if _anthropic(request):
        try:
            return JSONResponse(model_page(cards, dict(request.query_params)))
        except GatewayError as error:
            return JSONResponse(anthropic.error_body(error), status_code=anthropic.error_status(error))
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    call = call_of(request)
    try:
        target = resolve(call, request.path_params["model"])
    except GatewayError as error:
        if not _anthropic(request):
            raise
        return JSONResponse(anthropic.error_body(error), status_code=anthropic.error_status(error))
    found = remote_card(call.upstreams, target.model_id) if isinstance(target, Remote) else card(target)
    return JSONResponse(model_object(found) if _anthropic(request) else found)
