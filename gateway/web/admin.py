"""Admin endpoints (guarded by the admin key): running models, warm, unload, reload, recent requests, usage."""

from __future__ import annotations

import asyncio
import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError
from gateway.observability.recent import RECENT_MAX
from gateway.store.ledger import GROUPS
from gateway.web.context import services_of
from gateway.web.models import state


async def list_running(request: Request) -> Response:
    snapshot = services_of(request).scheduler.snapshot()
    cpu = services_of(request).scheduler.cpu.view()
    return JSONResponse(
        {
            "memory_budget": snapshot.budget,
            "memory_used": snapshot.memory_used,
            "memory_loading": snapshot.memory_loading,
            "pools": [
                {
                    "name": p.name,
                    "uuid": p.uuid,
                    "description": p.description,
                    "budget": p.budget,
                    "used": snapshot.pool_used(p.name),
                    "loading": snapshot.pool_loading(p.name),
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


def _instant(request: Request, name: str) -> float | None:
    """A query parameter as epoch seconds: a number, an ISO date (UTC midnight) or an ISO date-time."""
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GatewayError(
            400, f"'{name}' must be epoch seconds or an ISO date or date-time, not '{value}'.", param=name
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


async def usage(request: Request) -> Response:
    """Requests and tokens from the usage ledger: ?since=&until=&group_by=key,model,day."""
    groups = [g.strip() for g in request.query_params.get("group_by", "").split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or len(set(groups)) != len(groups):
        raise GatewayError(400, f"group_by takes distinct fields among {', '.join(GROUPS)}.", param="group_by")
    since, until = _instant(request, "since"), _instant(request, "until")
    try:
        rows = await asyncio.to_thread(services_of(request).ledger.usage, since, until, groups)
    except Exception as exc:  # the store is unreachable: say so, in the API's shape
        raise GatewayError(
            503,
            f"The usage ledger cannot be read now ({type(exc).__name__}).",
            type="server_error",
            code="store_unavailable",
        ) from None
    return JSONResponse({"object": "list", "data": rows})
