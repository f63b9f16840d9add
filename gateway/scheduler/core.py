"""The scheduler: admission (holds, per-model queues and turns, CPU grants), reload and TTL on top
of the model table's lifecycle. See the package docstring for the invariants it keeps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.config import ModelEntry, Settings
from gateway.engine.base import Engine, EngineFactory
from gateway.errors import GatewayError, model_not_found, queue_full, shutting_down
from gateway.memory.facts import ModelFacts
from gateway.memory.inventory import Inventory
from gateway.scheduler.cpu import CpuBudget, default_threads
from gateway.scheduler.devices import FREE_WAIT, Devices
from gateway.scheduler.eviction import expired
from gateway.scheduler.fairness import OPEN, KeyLeases, KeyTurns, Tenant
from gateway.scheduler.hold import Hold
from gateway.scheduler.loading import Loading
from gateway.scheduler.observer import Observer
from gateway.scheduler.reload import ReloadDiff, diff
from gateway.scheduler.slot import Slot
from gateway.scheduler.views import SlotView, State

log = logging.getLogger(__name__)
QUEUE_RETRY_AFTER = 1.0


def cpu_threads(entry: ModelEntry) -> int:
    """Threads a generating model keeps busy: offloaded models work on the GPU, their CPU threads mostly wait."""
    return (entry.runtime.thread_count or default_threads()) if entry.model.n_gpu_layers == 0 else 1


class Scheduler(Loading):
    def __init__(
        self,
        settings: Settings,
        facts: dict[str, ModelFacts],
        engine_factory: EngineFactory,
        budget: int,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        inventory: Inventory | None = None,
        free_wait: float = FREE_WAIT,
    ) -> None:
        """`budget`: the host pool's; `inventory`: where the GPUs are read from (none: CPU only);
        `free_wait`: the longest a load waits for memory an exited worker gave back to show as free."""
        devices = Devices(inventory, free_wait)
        super().__init__(settings, facts, engine_factory, budget, clock, observer, devices)
        self.cpu = CpuBudget(settings.gateway.cpu_threads, settings.gateway.cpu_wait_max)
        self.keys = KeyTurns()  # turns each key holds over every model (max_concurrent)
        self.leases: KeyLeases | None = None  # max_concurrent over every replica (gateway.shared_limits)
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None

    async def start(self, reap_interval: float = 0.5) -> None:
        """Begin loading pinned models and expiring idle ones (TTL)."""
        self._reaper = asyncio.create_task(self._reap_forever(reap_interval))
        for slot in self._slots.values():
            if slot.entry.pinned:
                self._in_background(self._warm_pinned(slot.model_id))

    async def close(self) -> None:
        """Stop every worker; no model stays loaded."""
        self._closing = True
        self._changed()  # requests waiting to be admitted see it and get a 503
        every = [*self._slots.values(), *self._retiring]
        stops = {s.stopping for s in every}  # workers on their way out finish exiting
        tasks = [t for t in (self._reaper, *self._background) if t is not None and t not in stops]
        tasks += [s.load_task for s in every if s.load_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._evict(every, "shutdown")

    # -- queries (snapshots only) --------------------------------------------------------------

    def view(self, name: str) -> SlotView:
        """The model `name` (an id or alias) refers to, now; 404 when there is none."""
        return self._resolve(name).view(self._clock())

    def views(self) -> tuple[SlotView, ...]:
        return self.snapshot().models

    def busy(self) -> bool:
        """Some model is generating, has requests waiting, or is loading: the cores are in use."""
        slots = (*self._slots.values(), *self._retiring)  # polled: no snapshot of pools needed
        return any(s.running or s.waiting or s.state is State.LOADING for s in slots)

    def pinned_not_loaded(self) -> list[str]:
        """Pinned models not loaded yet: the gateway is ready when there are none."""
        return [v.model_id for v in self.views() if v.entry.pinned and v.state is not State.LOADED]

    def _resolve(self, name: str) -> Slot:
        model_id = self.settings.resolve(name)
        if model_id is None or model_id not in self._slots:  # unknown, or not served by a local worker
            raise model_not_found(name)
        return self._slots[model_id]

    # -- admission -----------------------------------------------------------------------------

    def hold(self, name: str, *, generate: bool = True, tenant: Tenant = OPEN) -> Hold:
        """A hold on the model `name`, to enter with `async with`. `generate=False` for quick calls
        (tokenize) that take no turn and no CPU grant; `tenant` orders its turn (fairness.py).
        Entering raises 404 (unknown name), 429 (queue full), 503 (cannot load now, or ever)."""
        return Hold(self, name, generate=generate, tenant=tenant)

    async def _admit(self, hold: Hold) -> tuple[Slot, Engine]:
        slot = self._resolve(hold.name)
        while not slot.admitting and not self._closing:
            await self._change.wait()
            slot = self._resolve(hold.name)  # a reload may have replaced or removed it meanwhile
        if self._closing:
            raise shutting_down()
        limit = slot.entry.max_queue or self.settings.gateway.max_queue
        if slot.holds >= limit:
            raise queue_full(slot.model_id, limit, QUEUE_RETRY_AFTER)
        phase = "queued"
        if hold.generate:
            slot.waiting += 1
        else:
            slot.quick += 1
        try:
            engine = await self._loaded_engine(slot)
            if hold.generate:
                if self.leases is not None and hold.tenant.max_concurrent is not None:
                    hold.lease = await self.leases.acquire(hold.tenant.key, hold.tenant.max_concurrent)
                    hold.leased = True
                phase = "turn"
                hold.turn = await slot.take_turn(hold.tenant, self.keys, self._clock(), self._aging)
                phase = "running"
                await self.cpu.enter(slot.model_id, cpu_threads(slot.entry))
                phase = "granted"
                if not engine.alive:  # it crashed or was unloaded while this request waited its turn
                    engine = await self._loaded_engine(slot)
        except BaseException:
            if not hold.generate:
                slot.quick -= 1
            elif phase == "queued":
                slot.waiting -= 1
                self._end_lease(hold)
            elif phase == "turn":  # take_turn left no trace of its own
                self._end_lease(hold)
            elif phase == "running":
                self._end_turn(hold, slot)
            elif phase == "granted":
                self.cpu.leave(slot.model_id)
                self._end_turn(hold, slot)
            self._touch(slot)
            raise
        hold.running = hold.generate
        slot.last_used = self._clock()
        return slot, engine

    def _release(self, hold: Hold, slot: Slot) -> None:
        if hold.generate:
            self.cpu.leave(slot.model_id)
            self._end_turn(hold, slot)
            if not slot.decoded and slot.placement.on_gpu:
                self._in_background(self._measure_after_decode(slot))
        else:
            slot.quick -= 1
        self._touch(slot)

    def _end_lease(self, hold: Hold) -> None:
        if hold.leased and self.leases is not None:
            hold.leased = False
            self.leases.release(hold.tenant.key, hold.lease)

    def _end_turn(self, hold: Hold, slot: Slot) -> None:
        assert hold.turn is not None
        self._end_lease(hold)
        slot.end_turn(hold.turn, self.keys, self._clock(), self._aging)
        if hold.tenant.max_concurrent is not None:  # the key may run another of its requests elsewhere
            for other in (*self._slots.values(), *self._retiring):
                if other is not slot:
                    other.pass_turns(self.keys, self._clock(), self._aging)

    @property
    def _aging(self) -> float:
        return self.settings.gateway.batch_aging

    def _touch(self, slot: Slot) -> None:
        slot.last_used = self._clock()
        self._changed()

    # -- operations (admin endpoints, reload) --------------------------------------------------

    async def warm(self, name: str) -> SlotView:
        """Load a model without a request (admin, pinned models)."""
        async with self.hold(name, generate=False):
            pass
        return self.view(name)

    async def _warm_pinned(self, model_id: str) -> None:
        try:
            await self.warm(model_id)
        except GatewayError as exc:
            log.error("could not load pinned model %s: %s", model_id, exc.message)

    async def unload(self, name: str, *, force: bool = False, reason: str = "admin") -> SlotView:
        """Unload a model; waits for its requests to finish unless `force` (they then fail, and a
        load under way is stopped)."""
        slot = self._resolve(name)
        if force:
            await self._force_unload(slot, reason)
        else:
            await self._drain(slot, reason)
        return self.view(name)

    def apply(self, settings: Settings, facts: dict[str, ModelFacts], budget: int) -> ReloadDiff:
        """Switch to a new configuration (reload). New models appear; removed ones drain and unload;
        changed ones drain and load again on their next request; unchanged ones stay as they are.

        Synchronous: the old versions move to the retiring list in the same step as the new table
        takes over, so the memory they hold is counted at every instant."""
        change = diff({m: s.entry for m, s in self._slots.items()}, settings.models)
        old = self._slots
        slots: dict[str, Slot] = {}
        for model_id, entry in settings.models.items():
            if model_id in change.unchanged:
                slots[model_id] = old[model_id]
                slots[model_id].entry = entry  # the same version, perhaps under other aliases
            else:  # added, or changed: the new version opens once the old one has unloaded
                slots[model_id] = Slot(model_id, entry, facts[model_id], after_predecessor=model_id in change.changed)
        for model_id in (*change.changed, *change.removed):
            stale = old[model_id]
            stale.retiring = True
            self._retiring.append(stale)
            self._in_background(self._retire(stale))
        self.settings, self.budget, self._slots = settings, budget, slots
        self._place_defaults()  # the pools' budgets come from the new configuration
        self.cpu.max_wait = settings.gateway.cpu_wait_max
        self.cpu.resize(settings.gateway.cpu_threads)
        self._changed()
        for model_id in change.added:
            if settings.models[model_id].pinned:
                self._in_background(self._warm_pinned(model_id))
        return change

    async def _retire(self, stale: Slot) -> None:
        """Unload a replaced or removed version once its admitted requests finish; the version now
        configured (if any) opens to requests when no older version of it is left."""
        current = None
        try:
            await self._wait_idle(stale)
            await self._unload(stale, "reload")
        finally:
            self._retiring.remove(stale)
            current = self._slots.get(stale.model_id)
            if current is not None and not any(r.model_id == stale.model_id for r in self._retiring):
                current.after_predecessor = False
            self._changed()
        if current is not None and current.admitting and current.entry.pinned:
            await self._warm_pinned(current.model_id)

    # -- TTL -----------------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        """Unload models idle longer than their TTL; returns their ids."""
        victims = [self._slots[m] for m in expired(self.snapshot())]
        await self._evict(victims, "ttl")  # claimed in the same step as chosen: no hold can slip in
        return [s.model_id for s in victims]

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.devices.refresh(max_age=2.0)  # what /metrics and /admin show of the GPUs stays current
                self._remeasure_devices()  # what serving allocates on a GPU counts as it grows
                await self.reap()
            except Exception:
                log.exception("TTL reaper failed")
