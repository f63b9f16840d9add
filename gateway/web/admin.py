"""Admin endpoints (guarded by the admin key): running models, warm, unload, reload, recent requests."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.observability.recent import RECENT_MAX
from gateway.web.context import services_of
from gateway.web.models import state


async def list_running(request: Request) -> Response:
    snapshot = services_of(request).scheduler.snapshot()
    cpu = services_of(request).scheduler.cpu.view()
    return JSONResponse(
        {
            "memory_budget": snapshot.budget,
            "memory_used": snapshot.memory_used,
            "pools": [
                {
                    "name": p.name,
                    "uuid": p.uuid,
                    "description": p.description,
                    "budget": p.budget,
                    "used": snapshot.pool_used(p.name),
                    "total": p.total,
                    "free": p.free,
                    "reserve": p.reserve,
                }
                for p in snapshot.pools
            ],
            "models": [state(v) for v in snapshot.models],
            "retiring": [state(v) for v in snapshot.retiring],
            "cpu": {"capacity": cpu.capacity, "in_use": cpu.in_use, "grants": cpu.grants, "waiting": list(cpu.waiting)},
        }
    )


async def load(request: Request) -> Response:
    return JSONResponse(state(await services_of(request).scheduler.warm(request.path_params["model"])))


async def unload(request: Request) -> Response:
    force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
    view = await services_of(request).scheduler.unload(request.path_params["model"], force=force)
    return JSONResponse(state(view))


async def reload(request: Request) -> Response:
    return JSONResponse({"reloaded": True, **await services_of(request).reload()})


async def recent_requests(request: Request) -> Response:
    """The newest API calls (`?limit=`, default 50): the access log's fields, never prompts or outputs."""
    raw = request.query_params.get("limit", "50")
    limit = min(int(raw), RECENT_MAX) if raw.isdigit() else 50
    return JSONResponse({"object": "list", "data": services_of(request).recent.newest(limit)})
