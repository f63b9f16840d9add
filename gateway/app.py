"""Composition root: settings (+ how workers start) → Starlette application, with its start-up,
shutdown and reload wiring. What it serves is `route_table.py`; how workers start, `workers.py`;
the scheduler's figures for `/metrics`, `gauges.py`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway.accesslog import AccessLog
from gateway.auth import KeyRing, RateLimiter
from gateway.config import Settings, load_settings
from gateway.dialects.response_store import open_store
from gateway.errors import ConfigError, GatewayError
from gateway.gauges import model_states, pool_states
from gateway.inventory import Inventory, SystemInventory
from gateway.memory import ModelFacts, host_budget, inspect_models
from gateway.metrics import Metrics
from gateway.middleware import Gate, GatewayMiddleware
from gateway.record import RequestRecord
from gateway.route_table import endpoint_label, exception_handlers, route_table
from gateway.scheduler import Scheduler
from gateway.upstream.proxy import Upstreams
from gateway.watch import ConfigWatch
from gateway.workers import ProcessEngines, WorkerSpawn

log = logging.getLogger(__name__)


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
    processes = ProcessEngines(settings, spawn)
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
    processes.spares.busy = scheduler.busy  # a spare worker's start-up waits for a quiet moment
    metrics.watch(lambda: model_states(scheduler))
    metrics.watch_pools(lambda: pool_states(scheduler))
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
        routes=route_table(),
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
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    app.state.upstreams = upstreams
    app.state.metrics = metrics
    app.state.responses_store = open_store(settings.gateway.responses_store, settings.gateway.responses_store_max)
    app.state.reload = reload
    app.state.shutdown_grace = settings.gateway.shutdown_grace
    return app
