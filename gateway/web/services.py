"""What the application runs on, built once from the settings: the scheduler and its workers, the
remote models, the gate's keys and limits, metrics, the access log, the store (usage ledger and
Responses); and what changes them: start, reload, close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gateway.access.keys import KeyRing
from gateway.access.leases import SharedLeases
from gateway.access.limits import Limiter, Ticket
from gateway.access.link import RedisLink
from gateway.access.quotas import SharedQuotas
from gateway.access.shared import SharedCounters
from gateway.config import Settings, load_settings
from gateway.engine.process.factory import ProcessEngines, WorkerSpawn
from gateway.errors import ConfigError, GatewayError
from gateway.memory.facts import ModelFacts, inspect_models
from gateway.memory.inventory import Inventory, SystemInventory
from gateway.memory.options import host_budget
from gateway.observability.accesslog import AccessLog
from gateway.observability.collectors import StoreFigures
from gateway.observability.metrics import Metrics
from gateway.observability.recent import RecentRequests
from gateway.observability.record import RequestRecord
from gateway.scheduler import Scheduler
from gateway.scheduler.gauges import model_states, pool_states
from gateway.store.conversations import ConversationStore
from gateway.store.database import open_database
from gateway.store.ledger import Ledger, UsageRow
from gateway.store.responses import DocumentStore, ResponseStore, SqliteStore, Stored
from gateway.upstream.proxy import Upstreams
from gateway.web.gate import Gate
from gateway.web.routes import endpoint_label, is_api_call

log = logging.getLogger(__name__)


class Answerable:
    """A document store whose failures (the database unreachable) are answered as a 503
    `store_unavailable` in the API's shape, not as a bug. `up`: whether the database answered last
    (the usage ledger's writer keeps trying it): while it does not, calls are answered at once
    instead of each waiting for a connection that will not come."""

    def __init__(self, store: ResponseStore, up: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        self._up = up

    def _unavailable(self, exc: Exception) -> GatewayError:
        log.warning("store unreachable: %s", exc)
        message = f"The store of responses cannot be reached now ({type(exc).__name__}); try again later."
        return GatewayError(503, message, type="server_error", code="store_unavailable", retry_after=5)

    def get(self, response_id: str) -> Stored | None:
        if not self._up():
            raise self._unavailable(ConnectionError("the store is unreachable"))
        try:
            return self._store.get(response_id)
        except Exception as exc:
            raise self._unavailable(exc) from None

    def put(self, response_id: str, stored: Stored) -> None:
        if not self._up():
            raise self._unavailable(ConnectionError("the store is unreachable"))
        try:
            self._store.put(response_id, stored)
        except Exception as exc:
            raise self._unavailable(exc) from None

    def delete(self, response_id: str) -> bool:
        if not self._up():
            raise self._unavailable(ConnectionError("the store is unreachable"))
        try:
            return self._store.delete(response_id)
        except Exception as exc:
            raise self._unavailable(exc) from None

    def close(self) -> None:
        self._store.close()


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
        self.recent = RecentRequests()
        self.db = open_database(gateway.store)
        self.ledger = Ledger(self.db, spill_max=gateway.usage_spill_max, spill_file=gateway.usage_spill_file)
        self.metrics.watch_store(self.store_figures)
        # Redis, when configured, counts rate windows, quotas and running requests over every replica.
        self.link: RedisLink | None = None
        self.shared: SharedCounters | None = None
        self.leases: SharedLeases | None = None
        quotas: SharedQuotas | None = None
        if gateway.shared_limits is not None:
            self.link = RedisLink(gateway.shared_limits, prefix=gateway.shared_limits_prefix)
            self.shared, quotas = SharedCounters(self.link), SharedQuotas(self.link)
            self.leases = self.scheduler.leases = SharedLeases(self.link, ttl=gateway.shared_limits_lease)
        limiter = Limiter(self.shared, used_since=self._used_since, quotas=quotas)
        self.gate = Gate(KeyRing(settings), limiter, gateway.max_body_bytes, gateway.log_content)

        def store_up() -> bool:
            return self.ledger.healthy

        self.responses: ResponseStore = (
            Answerable(SqliteStore(gateway.responses_store, gateway.responses_store_max))
            if gateway.responses_store is not None
            else Answerable(DocumentStore(self.db, "response", gateway.responses_store_max), store_up)
        )
        # Beside the stored Responses, in the same store: a conversation outlives a restart and is shared by replicas.
        self.conversations: ConversationStore = Answerable(
            DocumentStore(self.db, "conversation", gateway.responses_store_max), store_up
        )
        self.shutdown_grace = gateway.shutdown_grace
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()

    def finish(self, record: RequestRecord, ticket: Ticket | None = None) -> None:
        """A request has ended (its stream included): its key's limits settled, metrics, the access log
        and, for a request that reached a model, its row in the usage ledger."""
        model = record.model or ""
        endpoint = endpoint_label(record.path)
        prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
        if ticket is not None:
            self.gate.limiter.settle(ticket, prompt + completion)
        self.metrics.request_done(model, endpoint, record.status or 0, record.elapsed)
        if record.completion_tokens is not None:
            self.metrics.generation_done(model, record.ttft, prompt, record.completion_tokens, record.decode_seconds)
        self.access_log.write(record)
        if is_api_call(record.method, record.path):
            self.recent.add(record)
        if record.model is None:
            return
        key = record.key_id or "anonymous"
        kinds = {
            "prompt": prompt,
            "completion": completion,
            "reasoning": record.reasoning_tokens,
            "cached": record.cached_tokens,
        }
        self.metrics.usage(key, model, kinds)
        self.ledger.add(
            UsageRow(
                time.time(),
                key,
                model,
                endpoint,
                record.status or 0,
                prompt,
                completion,
                record.reasoning_tokens,
                record.cached_tokens,
                record.elapsed,
            )
        )

    async def _used_since(self, key_id: str, since: float) -> int:
        """A key's tokens in the ledger; while the store is unreachable the quota counts locally at once
        instead of waiting on it."""
        if not self.ledger.healthy:
            raise ConnectionError("the store is unreachable")
        return await asyncio.to_thread(self.ledger.tokens_since, key_id, since)

    def store_figures(self) -> StoreFigures:
        up = {"store": self.ledger.healthy}
        if self.link is not None:
            up["shared_limits"] = self.link.healthy
        return StoreFigures(up, self.ledger.pending, self.ledger.dropped)

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
        self.ledger.start()

    async def close(self) -> None:
        await self.scheduler.close()
        await self.upstreams.close()
        await self.processes.spares.close()
        self.access_log.close()
        self.responses.close()
        self.conversations.close()
        if self.leases is not None:
            await self.leases.close()
        if self.link is not None:
            await self.link.close()
        await asyncio.to_thread(self.ledger.close)  # SIGTERM: the rows of every finished request are written
        self.db.close()
