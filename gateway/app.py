"""Composition root: settings + engine factory → Starlette application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import routes
from gateway.config import ModelEntry, Settings
from gateway.engine.base import Engine, EngineFactory
from gateway.errors import GatewayError, internal_error
from gateway.memory import ModelFacts, inspect_models, resolve_budget
from gateway.registry import Registry

log = logging.getLogger(__name__)


class _ProcessEngines:
    """Worker-process engines, with spare workers started ahead of need."""

    def __init__(self, settings: Settings) -> None:
        from gateway.engine.process import SparePool

        self._timeout = settings.gateway.load_timeout
        self.spares = SparePool(settings.gateway.spare_workers)

    def __call__(self, model_id: str, entry: ModelEntry) -> Engine:
        from gateway.engine.process import ProcessEngine

        return ProcessEngine(model_id, entry, self._timeout, self.spares)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = GatewayError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = internal_error(type(exc).__name__)
    return JSONResponse(error.body(), status_code=500)


def create_app(
    settings: Settings,
    *,
    engine_factory: EngineFactory | None = None,
    facts: dict[str, ModelFacts] | None = None,
    budget: int | None = None,
) -> Starlette:
    """Build the gateway. Tests pass a fake `engine_factory`; production uses worker processes."""
    processes = None
    if engine_factory is None:
        processes = engine_factory = _ProcessEngines(settings)
    registry = Registry(
        settings,
        facts if facts is not None else inspect_models(settings),
        engine_factory,
        budget if budget is not None else resolve_budget(settings.gateway.memory_budget),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if processes is not None:
            processes.spares.refill()
        await registry.start()
        try:
            yield
        finally:
            await registry.close()
            if processes is not None:
                await processes.spares.close()

    app = Starlette(
        routes=[
            Route("/health", routes.health, methods=["GET"]),
            Route("/v1/models", routes.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.get_model, methods=["GET"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.shutdown_grace = settings.gateway.shutdown_grace
    return app
