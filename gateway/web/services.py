"""What the application runs on, built once from the settings: the scheduler and its workers, the
remote models, the gate's keys and limits, metrics, the access log and the Responses store; and what
changes them: start, reload, close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import httpx

from gateway.access.keys import KeyRing, RateLimiter
from gateway.config import Settings, load_settings
from gateway.engine.process.factory import ProcessEngines, WorkerSpawn
from gateway.errors import ConfigError, GatewayError
from gateway.memory.facts import ModelFacts, inspect_models
from gateway.memory.inventory import Inventory, SystemInventory
from gateway.memory.options import host_budget
from gateway.observability.accesslog import AccessLog
from gateway.observability.metrics import Metrics
from gateway.observability.record import RequestRecord
from gateway.scheduler import Scheduler
from gateway.scheduler.gauges import model_states, pool_states
from gateway.store.conversations import ConversationStore, MemoryConversations
from gateway.store.responses import ResponseStore, open_store
from gateway.upstream.proxy import Upstreams
from gateway.web.gate import Gate
from gateway.web.routes import endpoint_label

log = logging.getLogger(__name__)


class Services:
    """Tests pass `spawn`, which starts a model's worker (the real worker loop over a fake llama.cpp,
    in a thread), and may pass the models' `facts` and the host `budget` instead of reading them.

    `config_path` is what a reload reads again. `upstream_transport` replaces the network for remote
    models (tests). `inventory`: where the GPUs are read from; by default this machine's, none with a
    test's `spawn`."""

    def __init__(
        self,
        settings: Settings,
        *,
        spawn: WorkerSpawn | None = None,
        facts: dict[str, ModelFacts] | None = None,
        budget: int | None = None,
        config_path: Path | None = None,
        upstream_transport: httpx.AsyncBaseTransport | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.processes = ProcessEngines(settings, spawn)
        if spawn is None:
            inventory = inventory or SystemInventory()
        self.scheduler = Scheduler(
            settings,
            facts if facts is not None else inspect_models(settings),
            self.processes,
            budget if budget is not None else host_budget(settings),
            observer=self.metrics,
            inventory=inventory,
        )
        self.upstreams = Upstreams(settings, self.metrics, upstream_transport)
        self.metrics.watch(lambda: model_states(self.scheduler))
        self.metrics.watch_pools(lambda: pool_states(self.scheduler))
        self.metrics.watch_circuits(lambda: [(m, u, s.value) for m, u, s in self.upstreams.circuits()])
        gateway = settings.gateway
        self.access_log = AccessLog(gateway.access_log, gateway.log_content)
        self.gate = Gate(KeyRing(settings), RateLimiter(), gateway.max_body_bytes, gateway.log_content)
        self.responses: ResponseStore = open_store(gateway.responses_store, gateway.responses_store_max)
        self.conversations: ConversationStore = MemoryConversations(gateway.responses_store_max)
        self.shutdown_grace = gateway.shutdown_grace
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()

    def finish(self, record: RequestRecord) -> None:
        """A request has ended (its stream included): metrics and the access log."""
        model = record.model or ""
        self.metrics.request_done(model, endpoint_label(record.path), record.status or 0, record.elapsed)
        if record.completion_tokens is not None:
            self.metrics.generation_done(
                model, record.ttft, record.prompt_tokens or 0, record.completion_tokens, record.decode_seconds
            )
        self.access_log.write(record)

    async def reload(self) -> dict[str, Any]:
        """Apply the configuration file again; an invalid one changes nothing and says why."""
        async with self._reload_lock:
            if self.config_path is None:
                raise GatewayError(400, "Nothing to reload: the gateway serves its embedded default configuration.")
            try:
                new = await asyncio.to_thread(load_settings, self.config_path)
                new_facts = await asyncio.to_thread(inspect_models, new)
            except ConfigError as exc:
                log.error("configuration not reloaded, keeping the running one: %s", exc)
                raise GatewayError(
                    400, f"The configuration was not reloaded (the running one stays): {exc}", code="invalid_config"
                ) from None
            summary = self.scheduler.apply(new, new_facts, host_budget(new)).summary()
            for key, names in self.upstreams.apply(new).items():
                summary[key] = [*summary[key], *names]
            self.gate.keyring = KeyRing(new)
            self.gate.max_body_bytes = new.gateway.max_body_bytes
            self.shutdown_grace = new.gateway.shutdown_grace
            log.info("configuration reloaded: %s", summary)
            return summary

    def reload_soon(self) -> None:
        """A reload in the background (SIGHUP): a failure is logged and the running configuration stays."""

        async def run() -> None:
            with contextlib.suppress(GatewayError):
                await self.reload()

        task = asyncio.ensure_future(run())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def start(self) -> None:
        # Spare workers start now only without GPUs: a GPU placement starts its worker with the devices
        # it may see. A spare's replacement waits while the scheduler is busy.
        self.processes.spares.start(self.scheduler.busy, fill=not self.scheduler.devices.gpu)
        await self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.close()
        await self.upstreams.close()
        await self.processes.spares.close()
        self.access_log.close()
        self.responses.close()
        self.conversations.close()
