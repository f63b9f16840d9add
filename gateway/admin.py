"""Admin endpoints (guarded by the admin key): running models, warm, unload, reload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.scheduler import Scheduler, SlotView
from gateway.toolplan import native_tools

Reload = Callable[[], Awaitable[dict[str, Any]]]


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def describe(view: SlotView) -> dict[str, Any]:
    return {
        "id": view.model_id,
        "state": view.state.value,
        "pinned": view.entry.pinned,
        "memory_bytes": view.memory_bytes,
        "memory_pools": dict(view.pools),
        "measured_pools": dict(view.measured_pools) if view.measured_pools is not None else None,
        "placement": view.placement,
        "estimated_bytes": view.estimated_bytes,
        "measured_bytes": view.measured_bytes,
        "leases": view.holds,
        "in_flight": view.running,
        "queued": view.holds - view.running,
        "parallel": view.parallel,
        "idle_expires_in": view.idle_expires_in,
        "draining": view.draining,
        "tool_template": "native" if native_tools(view) else "generic",
    }


async def list_running(request: Request) -> Response:
    snapshot = _scheduler(request).snapshot()
    cpu = _scheduler(request).cpu.view()
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
            "models": [describe(v) for v in snapshot.models],
            "retiring": [describe(v) for v in snapshot.retiring],
            "cpu": {"capacity": cpu.capacity, "in_use": cpu.in_use, "grants": cpu.grants, "waiting": list(cpu.waiting)},
        }
    )


async def load(request: Request) -> Response:
    return JSONResponse(describe(await _scheduler(request).warm(request.path_params["model"])))


async def unload(request: Request) -> Response:
    force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
    view = await _scheduler(request).unload(request.path_params["model"], force=force)
    return JSONResponse(describe(view))


async def reload(request: Request) -> Response:
    run: Reload = request.app.state.reload
    return JSONResponse({"reloaded": True, **await run()})
