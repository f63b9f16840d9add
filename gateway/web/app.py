"""Composition root: settings (+ how workers start) → the Starlette application: its routes, the gate,
CORS, error shapes, and the start-up and shutdown of its services."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway.config import Settings
from gateway.config.watch import ConfigWatch
from gateway.engine.process.factory import WorkerSpawn
from gateway.memory.facts import ModelFacts
from gateway.memory.inventory import Inventory
from gateway.web.console import console_routes
from gateway.web.errors import exception_handlers
from gateway.web.gate import GatewayMiddleware
from gateway.web.routes import ROUTES
from gateway.web.services import Services

CORS_HEADERS = ["authorization", "content-type", "x-api-key", "x-request-id", "anthropic-version", "anthropic-beta"]


def create_app(
    settings: Settings,
    *,
    spawn: WorkerSpawn | None = None,
    facts: dict[str, ModelFacts] | None = None,
    budget: int | None = None,
    config_path: Path | None = None,
    handle_sighup: bool = False,
    watch_config: float = 0.0,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    inventory: Inventory | None = None,
) -> Starlette:
    """The gateway over its `Services` (which say what the other arguments are). With `handle_sighup`,
    SIGHUP reloads the configuration file; with `watch_config` > 0 the file is also checked that often
    and reloaded when its content changes."""
    services = Services(
        settings,
        spawn=spawn,
        facts=facts,
        budget=budget,
        config_path=config_path,
        upstream_transport=upstream_transport,
        inventory=inventory,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if handle_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, services.reload_soon)
        await services.start()
        watcher = None
        if watch_config > 0 and services.config_path is not None:
            watcher = asyncio.create_task(ConfigWatch(services.config_path, watch_config, services.reload).run())
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await services.close()

    app = Starlette(
        routes=[*ROUTES, *(console_routes() if settings.gateway.console else [])],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=settings.gateway.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=CORS_HEADERS,
                expose_headers=["x-request-id", "retry-after"],
            ),
            Middleware(GatewayMiddleware, gate=services.gate, on_finish=services.finish),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.services = services
    return app
