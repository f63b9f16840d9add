"""Endpoints that describe the gateway: health, readiness, metrics, the model list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.remote_routes import remote_card, remote_model
from gateway.responses import model_card
from gateway.routes import resolve_for
from gateway.scheduler import SlotView
from gateway.toolplan import native_tools
from gateway.web import principal_of, scheduler_of, upstreams_of


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    pending = scheduler_of(request).pinned_not_loaded()
    if pending:
        return JSONResponse({"status": "loading", "pinned_not_loaded": pending}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    collectors: Metrics = request.app.state.metrics
    return Response(collectors.exposition(), media_type=CONTENT_TYPE)


def _card(view: SlotView) -> dict[str, object]:
    path = view.facts.info.path
    # Estimate before load (what the worker holds once loaded), measured after; with GPUs, every pool.
    memory = view.measured_bytes if view.measured_bytes is not None else view.facts.estimate.total
    if set(view.pools) - {"host"}:
        memory = view.memory_bytes
    card = model_card(view.model_id, int(path.stat().st_mtime) if path.exists() else 0, view.state.client_value, memory)
    card["aliases"] = list(view.entry.aliases)
    # Per memory pool (host, cuda0...), for where it is or would be placed: estimated, then measured.
    card["memory_pools"] = dict(view.pools)
    card["placement"] = view.placement
    if not view.entry.embedding:
        card["tool_template"] = "native" if native_tools(view) else "generic"
    return card


async def list_models(request: Request) -> Response:
    principal = principal_of(request)
    cards = [_card(v) for v in scheduler_of(request).views() if principal.may_use(v.model_id)]
    cards += [remote_card(request, m) for m in upstreams_of(request).models if principal.may_use(m)]
    return JSONResponse({"object": "list", "data": cards})


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    remote = remote_model(request, name)
    if remote is not None:
        return JSONResponse(remote_card(request, remote))
    return JSONResponse(_card(resolve_for(request, name)))
