"""Composition root: settings (+ how workers start) → Starlette application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin, info_routes, routes
from gateway.accesslog import AccessLog
from gateway.auth import KeyRing, RateLimiter
from gateway.config import ModelEntry, Settings, load_settings
from gateway.dialects import anthropic_routes, responses_routes
from gateway.dialects.response_store import open_store
from gateway.engine.base import Engine
from gateway.errors import ConfigError, GatewayError, internal_error
from gateway.inventory import Inventory, SystemInventory
from gateway.memory import ModelFacts, host_budget, inspect_models
from gateway.metrics import Metrics, ModelState, PoolFigures
from gateway.middleware import Gate, GatewayMiddleware, error_response
from gateway.record import RequestRecord
from gateway.scheduler import Scheduler
from gateway.upstream.proxy import Upstreams
from gateway.watch import ConfigWatch

if TYPE_CHECKING:
    from gateway.engine.spares import Spawned

log = logging.getLogger(__name__)
# (model id, the environment a real worker would get: CUDA_VISIBLE_DEVICES) -> a started worker
WorkerSpawn = Callable[[str, dict[str, str] | None], Awaitable["Spawned"]]

# Paths as metric labels: fixed names, so unknown paths cannot blow up the label set.
_ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/extras/tokenize",
    "/extras/detokenize",
    "/v1/models",
    "/health",
    "/health/ready",
    "/metrics",
    "/admin/models",
    "/admin/reload",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
}


def endpoint_label(path: str) -> str:
    if path in _ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    if path.startswith("/admin/models/"):
        return "/admin/models/{model}/" + path.rsplit("/", 1)[-1]
    return "other"


class _ProcessEngines:
    """Worker-process engines, with spare workers started ahead of need; or, given `spawn` (tests:
    the real worker loop over a fake llama.cpp), each worker started by it and no spares."""

    def __init__(self, settings: Settings, spawn: WorkerSpawn | None) -> None:
        from gateway.engine.spares import SparePool

        self._timeout = settings.gateway.load_timeout
        self._spawn = spawn
        self.spares = SparePool(0 if spawn else settings.gateway.spare_workers)

    def __call__(self, model_id: str, entry: ModelEntry) -> Engine:
        from gateway.engine.process import ProcessEngine

        spawn = self._spawn
        if spawn is None:
            return ProcessEngine(model_id, entry, self._timeout, self.spares)
        engine = ProcessEngine(model_id, entry, self._timeout, spawn=lambda: spawn(model_id, engine.worker_env))
        return engine


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = GatewayError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code)
    response = error_response(request.url.path, error)
    response.headers.update(exc.headers or {})
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, internal_error(type(exc).__name__))


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
    """Build the gateway: a worker process per loaded model. Tests pass `spawn`, which starts a
    model's worker (the real worker loop over a fake llama.cpp, in a thread).

    `config_path` is what a reload (SIGHUP with `handle_sighup`, or POST /admin/reload) reads again;
    with `watch_config` > 0 the file is also checked that often and reloaded when its content changes.
    `upstream_transport` replaces the network for remote models (tests). `inventory`: where the GPUs
    are read from; by default this machine's, none with a test's `spawn`.
    """
    metrics = Metrics()
    processes = _ProcessEngines(settings, spawn)
    if spawn is None:
        inventory = inventory or SystemInventory()
    scheduler = Scheduler(
        settings,
        facts if facts is not None else inspect_models(settings),
        processes,
        budget if budget is not None else host_budget(settings),
        observer=metrics,
        inventory=inventory,
    )
    metrics.watch(lambda: _model_states(scheduler))
    metrics.watch_pools(lambda: _pool_states(scheduler))
    upstreams = Upstreams(settings, metrics, upstream_transport)
    metrics.watch_circuits(lambda: [(m, u, state.value) for m, u, state in upstreams.circuits()])
    access_log = AccessLog(settings.gateway.access_log, settings.gateway.log_content)
    gate = Gate(KeyRing(settings), RateLimiter(), settings.gateway.max_body_bytes, settings.gateway.log_content)
    reload_lock = asyncio.Lock()

    def finish(record: RequestRecord) -> None:
        seconds = record.decode_seconds
        metrics.request_done(record.model or "", endpoint_label(record.path), record.status or 0, record.elapsed)
        if record.completion_tokens is not None:
            metrics.generation_done(
                record.model or "", record.ttft, record.prompt_tokens or 0, record.completion_tokens, seconds
            )
        access_log.write(record)

    async def reload() -> dict[str, Any]:
        """Apply the configuration file again; an invalid one changes nothing and says why."""
        async with reload_lock:
            if config_path is None:
                raise GatewayError(400, "Nothing to reload: the gateway serves its embedded default configuration.")
            try:
                new = await asyncio.to_thread(load_settings, config_path)
                new_facts = await asyncio.to_thread(inspect_models, new)
            except ConfigError as exc:
                log.error("configuration not reloaded, keeping the running one: %s", exc)
                raise GatewayError(
                    400, f"The configuration was not reloaded (the running one stays): {exc}", code="invalid_config"
                ) from None
            summary = scheduler.apply(new, new_facts, host_budget(new)).summary()
            for key, names in upstreams.apply(new).items():
                summary[key] = [*summary[key], *names]
            gate.keyring = KeyRing(new)
            gate.max_body_bytes = new.gateway.max_body_bytes
            app.state.shutdown_grace = new.gateway.shutdown_grace
            log.info("configuration reloaded: %s", summary)
            return summary

    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        async def run() -> None:
            with contextlib.suppress(GatewayError):  # already logged; the running configuration stays
                await reload()

        task = asyncio.ensure_future(run())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not scheduler.devices.gpu:
            processes.spares.refill()  # (a GPU placement starts its worker with the devices it may see)
        if handle_sighup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
        await scheduler.start()
        watcher = None
        if watch_config > 0 and config_path is not None:
            watcher = asyncio.create_task(ConfigWatch(config_path, watch_config, reload).run())
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await scheduler.close()
            await upstreams.close()
            await processes.spares.close()
            access_log.close()
            app.state.responses_store.close()

    app = Starlette(
        routes=[
            Route("/health", info_routes.health, methods=["GET"]),
            Route("/health/ready", info_routes.ready, methods=["GET"]),
            Route("/metrics", info_routes.metrics, methods=["GET"]),
            Route("/v1/models", info_routes.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", info_routes.get_model, methods=["GET"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/embeddings", routes.embeddings, methods=["POST"]),
            Route("/v1/messages", anthropic_routes.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", anthropic_routes.count_tokens, methods=["POST"]),
            Route("/v1/responses", responses_routes.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", responses_routes.retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", responses_routes.delete, methods=["DELETE"]),
            Route("/extras/tokenize", routes.tokenize, methods=["POST"]),
            Route("/extras/detokenize", routes.detokenize, methods=["POST"]),
            Route("/admin/models", admin.list_running, methods=["GET"]),
            Route("/admin/models/{model:path}/load", admin.load, methods=["POST"]),
            Route("/admin/models/{model:path}/unload", admin.unload, methods=["POST"]),
            Route("/admin/reload", admin.reload, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=settings.gateway.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "x-api-key",
                    "x-request-id",
                    "anthropic-version",
                    "anthropic-beta",
                ],
                expose_headers=["x-request-id", "retry-after"],
            ),
            Middleware(GatewayMiddleware, gate=gate, on_finish=finish),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    app.state.upstreams = upstreams
    app.state.metrics = metrics
    app.state.responses_store = open_store(settings.gateway.responses_store, settings.gateway.responses_store_max)
    app.state.reload = reload
    app.state.shutdown_grace = settings.gateway.shutdown_grace
    return app


def _model_states(scheduler: Scheduler) -> tuple[list[ModelState], int]:
    snapshot = scheduler.snapshot()
    states = []
    for v in snapshot.models:
        batch = v.batch
        states.append(
            ModelState(
                v.model_id,
                v.state.client_value,
                v.running,
                v.holds - v.running,
                v.estimated_bytes,
                v.measured_bytes,
                slots=v.parallel,
                batch_running=batch.running if batch else 0,
                batch_waiting=batch.waiting if batch else 0,
                kv_usage=batch.kv_usage if batch else 0.0,
                reused_tokens=batch.reused_tokens if batch else 0,
                pools=dict(v.pools) if v.state.resident else {},
            )
        )
    return states, snapshot.budget


def _pool_states(scheduler: Scheduler) -> list[PoolFigures]:
    snapshot = scheduler.snapshot()
    return [
        PoolFigures(p.name, p.budget, p.total, p.free, snapshot.pool_used(p.name), p.uuid or "") for p in snapshot.pools
    ]
