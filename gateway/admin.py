"""Admin endpoints (guarded by the admin key): running models, warm, unload, reload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.registry import Registry, Slot
from gateway.toolprompt import native_tools

Reload = Callable[[], Awaitable[dict[str, Any]]]


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def describe(registry: Registry, slot: Slot) -> dict[str, Any]:
    return {
        "id": slot.model_id,
        "state": slot.state.value,
        "pinned": slot.entry.pinned,
        "memory_bytes": slot.memory_bytes,
        "estimated_bytes": slot.facts.estimate.total,
        "measured_bytes": slot.measured_bytes,
        "leases": slot.leases,
        "in_flight": slot.generating,
        "queued": slot.queued,
        "idle_expires_in": registry.idle_expiry(slot),
        "draining": slot.draining,
        "tool_template": "native"
        if native_tools(slot.entry.model.chat_format, slot.facts.info.metadata.get("tokenizer.chat_template"))
        else "generic",
    }


async def list_running(request: Request) -> Response:
    registry = _registry(request)
    return JSONResponse(
        {
            "memory_budget": registry.budget,
            "memory_used": registry.resident_bytes(),
            "models": [describe(registry, s) for s in registry.slots()],
        }
    )


async def load(request: Request) -> Response:
    registry = _registry(request)
    slot = await registry.warm(request.path_params["model"])
    return JSONResponse(describe(registry, slot))


async def unload(request: Request) -> Response:
    registry = _registry(request)
    force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
    name = request.path_params["model"]
    await registry.unload(name, force=force)
    return JSONResponse(describe(registry, registry.resolve(name)))


async def reload(request: Request) -> Response:
    run: Reload = request.app.state.reload
    return JSONResponse({"reloaded": True, **await run()})
