"""The model table, unloading, draining and crashes (loading is `loading.py`).

Each method reads the slots and changes them in the same synchronous stretch (no `await` between
a read that gates a mutation and the mutation), so two tasks never act on one stale reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.config import Settings
from gateway.engine.base import Engine, EngineFactory
from gateway.memory.facts import ModelFacts
from gateway.memory.pools import PoolState, Vector
from gateway.scheduler.devices import Devices
from gateway.scheduler.eviction import idle_on
from gateway.scheduler.observer import NoObserver, Observer
from gateway.scheduler.slot import Slot
from gateway.scheduler.views import Snapshot, State

log = logging.getLogger(__name__)


class Lifecycle:
    """The model table and what happens to its models. `Scheduler` adds admission on top."""

    def __init__(
        self,
        settings: Settings,
        facts: dict[str, ModelFacts],
        engine_factory: EngineFactory,
        budget: int,
        clock: Callable[[], float],
        observer: Observer | None,
        devices: Devices,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.devices = devices
        self.observer: Observer = observer or NoObserver()
        self._factory = engine_factory
        self._clock = clock
        self._slots = {m: Slot(m, entry, facts[m]) for m, entry in settings.models.items()}
        self._retiring: list[Slot] = []  # replaced or removed by a reload, finishing their requests
        self._change = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._place_defaults()

    def now(self) -> float:
        """The clock LRU order and TTLs are measured with."""
        return self._clock()

    def snapshot(self) -> Snapshot:
        now = self._clock()
        return Snapshot(
            models=tuple(s.view(now) for s in self._slots.values()),
            retiring=tuple(s.view(now) for s in self._retiring),
            budget=self.budget,
            max_loaded=self.settings.gateway.max_loaded,
            pools=self.pools(),
        )

    def pools(self) -> tuple[PoolState, ...]:
        """Host first, then each GPU, with budgets and what the devices last reported."""
        return self.devices.pools(self.settings, self.budget)

    def _place_defaults(self) -> None:
        """Where each model not loaded would go on empty devices (what /v1/models shows before a load)."""
        pools = self.pools()
        for slot in self._slots.values():
            if not slot.state.resident:
                option = self.devices.options(slot.entry, slot.facts, self.settings, pools, Vector())[0]
                slot.default_need, slot.placement, slot.need = option.need, option.placement, None

    # -- unloading -----------------------------------------------------------------------------

    def _start_unload(self, slot: Slot, reason: str) -> None:
        """Mark the slot unloading and start stopping its worker, in this step (no new holds from
        here on). The stop runs as a task of its own, so a caller that goes away (a load cancelled
        while it evicts) does not end it early, and the slot counts as resident until the worker has
        exited: nothing else is loaded into memory still in use."""
        engine = slot.engine
        if engine is None:
            if slot.state is State.UNLOADING and slot.stopping is None:  # nothing left to stop
                slot.state = State.UNLOADED
                self._changed()
            return
        log.info("unloading %s (%s)", slot.model_id, reason)
        self.observer.model_unloaded(slot.model_id, reason)
        slot.last_measured = engine.measured_bytes() or slot.last_measured
        self._stop_worker(slot, engine, reason)

    def _stop_worker(self, slot: Slot, engine: Engine, reason: str | None) -> None:
        vector = slot.vector
        slot.engine = None
        slot.state = State.UNLOADING
        slot.stopping = self._in_background(self._stopping(slot, engine, vector, reason))
        self._changed()

    async def _stopping(self, slot: Slot, engine: Engine, vector: Vector, reason: str | None) -> None:
        try:
            await engine.stop(reason)
            self.devices.returned(vector)  # the next load there waits until the driver shows it
        finally:
            if slot.stopping is asyncio.current_task():
                slot.stopping = None
                if slot.state is State.UNLOADING:
                    slot.state = State.UNLOADED
            self._changed()

    async def _evict(self, victims: Sequence[Slot], reason: str) -> None:
        """Unload models the caller chose in its current step: each is claimed (no new holds) and its
        stop started before the first `await`; returns once every worker has exited."""
        for victim in victims:
            self._start_unload(victim, reason)
        await asyncio.gather(*(victim.stopped() for victim in victims))

    async def _unload(self, slot: Slot, reason: str) -> None:
        """Unload the slot; returns once its worker (or the one another unload is stopping) has exited."""
        self._start_unload(slot, reason)
        await slot.stopped()

    async def _force_unload(self, slot: Slot, reason: str) -> None:
        """Unload now: running requests fail, a load under way is stopped (its waiters get a 503)."""
        task = slot.load_task
        if task is not None:
            slot.abort_load = reason
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if slot.load_task is task:  # cancelled before its first step: its `finally` never ran
                await asyncio.sleep(0)  # its waiters read abort_load first
                slot.load_task = None
                slot.abort_load = None
                slot.state = State.UNLOADED
                self._changed()
        if slot.state is not State.LOADING:  # a load a newer request started meanwhile is left alone
            await self._unload(slot, reason)

    async def _drain(self, slot: Slot, reason: str) -> None:
        """No new holds; unload once the admitted requests (and any load) have finished."""
        slot.draining = True
        self._changed()
        try:
            await self._wait_idle(slot)
            await self._unload(slot, reason)
        finally:
            slot.draining = False
            self._changed()

    async def _wait_idle(self, slot: Slot) -> None:
        while slot.holds > 0 or slot.load_task is not None:
            await self._change.wait()

    def _on_exit(self, slot: Slot, engine: Engine, reason: str) -> None:
        # A worker that exits while loading failed its load: `_load` answers for that.
        if slot.engine is engine and slot.state is not State.LOADING:
            log.warning("model %s lost its worker (%s); the next request starts a new one", slot.model_id, reason)
            self.observer.worker_crashed(slot.model_id)
            self.devices.returned(slot.vector)
            slot.engine = None
            slot.state = State.UNLOADED
            self._in_background(engine.stop())
            oom = engine.out_of_memory()
            if oom is not None:  # it ran out of device memory: make room there before it happens again
                devices = [oom.device] if oom.device else list(slot.placement.devices)
                snapshot = self.snapshot()
                for model_id in {m for device in devices for m in idle_on(snapshot, device)}:
                    self._start_unload(self._slots[model_id], "device_oom")
            self._changed()

    # -- helpers -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
