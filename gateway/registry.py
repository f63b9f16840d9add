"""Which models are loaded: on-demand single-flight loads, leases, LRU eviction under a memory budget, TTL.

The eviction choice is `eviction.plan_room`, a pure function of (what is needed, the residents, the limits).
Everything else here is bookkeeping on the event loop: state changes happen synchronously between
awaits, so no lock is needed to keep two loads from claiming the same room.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.compute import CpuThreads, default_threads
from gateway.config import ModelEntry, Settings
from gateway.engine.base import Engine, EngineFactory
from gateway.errors import (
    GatewayError,
    load_failed,
    model_not_found,
    never_fits,
    no_room,
    queue_full,
    shutting_down,
)
from gateway.eviction import Resident, plan_room
from gateway.memory import ModelFacts

log = logging.getLogger(__name__)

QUEUE_RETRY_AFTER = 1.0
ROOM_RETRY_AFTER = 5.0


class State(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


class Observer(Protocol):
    """Told about model lifecycle events (metrics implement this)."""

    def model_loaded(self, model: str, seconds: float) -> None: ...
    def model_load_failed(self, model: str) -> None: ...
    def model_unloaded(self, model: str, reason: str) -> None: ...
    def worker_crashed(self, model: str) -> None: ...


class _NoObserver:
    def model_loaded(self, model: str, seconds: float) -> None:
        pass

    def model_load_failed(self, model: str) -> None:
        pass

    def model_unloaded(self, model: str, reason: str) -> None:
        pass

    def worker_crashed(self, model: str) -> None:
        pass


@dataclass
class Slot:
    """One configured model and its runtime state."""

    model_id: str
    entry: ModelEntry
    facts: ModelFacts
    state: State = State.UNLOADED
    engine: Engine | None = None
    leases: int = 0
    last_used: float = 0.0
    load_task: asyncio.Task[None] | None = None
    failed_until: float = 0.0
    failure: str = ""
    generating: int = 0  # leases that hold CPU threads: running, not waiting in the queue
    draining: bool = False  # being unloaded once the requests it has admitted finish
    blocked: bool = False  # new requests wait: a drain is under way, or the old version still drains
    last_measured: int | None = None

    @property
    def queued(self) -> int:
        return self.leases - self.generating

    @property
    def resident(self) -> bool:
        return self.state in (State.LOADING, State.LOADED)

    @property
    def measured_bytes(self) -> int | None:
        measured = self.engine.measured_bytes() if self.engine is not None else None
        return measured if measured is not None else self.last_measured

    @property
    def memory_bytes(self) -> int:
        """Measured once the model has been loaded, the GGUF estimate before."""
        measured = self.measured_bytes
        return measured if measured is not None else self.facts.estimate.total


class Lease:
    """A request's hold on a loaded model: while any lease is held, the model is not evicted."""

    def __init__(self, registry: Registry, slot: Slot, engine: Engine) -> None:
        self._registry = registry
        self._slot = slot
        self.engine = engine
        self._released = False
        self._cpu_granted = 0
        self._generating = False

    async def reserve_cpu(self) -> None:
        """Wait for this model's share of CPU threads before generating; held until release()."""
        entry = self._slot.entry
        threads = entry.runtime.thread_count or default_threads()
        # Offloaded models do their work on the GPU; their CPU threads mostly wait.
        self._cpu_granted = await self._registry.cpu.acquire(threads if entry.model.n_gpu_layers == 0 else 1)
        self._slot.generating += 1
        self._generating = True

    @property
    def model_id(self) -> str:
        return self._slot.model_id

    @property
    def entry(self) -> ModelEntry:
        return self._slot.entry

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self._cpu_granted:
                self._registry.cpu.release(self._cpu_granted)
            if self._generating:
                self._slot.generating -= 1
            self._registry._release(self._slot)


class Registry:
    def __init__(
        self,
        settings: Settings,
        facts: dict[str, ModelFacts],
        engine_factory: EngineFactory,
        budget: int,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.observer: Observer = observer or _NoObserver()
        self.budget = budget
        self._factory = engine_factory
        self._clock = clock
        self._slots = {model_id: Slot(model_id, entry, facts[model_id]) for model_id, entry in settings.models.items()}
        self._retiring: list[Slot] = []  # replaced or removed by a reload, still serving requests
        self._change = asyncio.Event()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.cpu = CpuThreads(settings.gateway.cpu_threads)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, reap_interval: float = 0.5) -> None:
        """Begin loading pinned models and expiring idle ones (TTL)."""
        self._reaper = asyncio.create_task(self._reap_forever(reap_interval))
        for slot in self._slots.values():
            if slot.entry.pinned:
                self._spawn(self._warm(slot))

    async def close(self) -> None:
        """Stop every worker; no model stays loaded."""
        self._closing = True
        tasks = [t for t in (self._reaper, *self._background) if t is not None]
        tasks += [s.load_task for s in self._slots.values() if s.load_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        every = [*self._slots.values(), *self._retiring]
        await asyncio.gather(*(self._unload(s, "shutdown") for s in every if s.engine))

    # -- queries -------------------------------------------------------------------------------

    def resolve(self, name: str) -> Slot:
        model_id = self.settings.resolve(name)
        if model_id is None or model_id not in self._slots:  # unknown, or a remote (upstream) model
            raise model_not_found(name)
        return self._slots[model_id]

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def resident_bytes(self) -> int:
        return sum(s.memory_bytes for s in [*self._slots.values(), *self._retiring] if s.resident)

    # -- leases --------------------------------------------------------------------------------

    async def acquire(self, name: str) -> Lease:
        """Hold the model for one request, loading it first if needed.

        Raises 404 for unknown names, 429 when the model's queue is full, 503 when it cannot be
        loaded now (busy memory, failed load) or ever (too large for the budget).
        """
        slot = self.resolve(name)
        if self._closing:
            raise shutting_down()
        while slot.blocked:
            await self._change.wait()
            slot = self.resolve(name)  # a reload may have replaced or removed it meanwhile
        limit = slot.entry.max_queue or self.settings.gateway.max_queue
        if slot.leases >= limit:
            raise queue_full(slot.model_id, limit, QUEUE_RETRY_AFTER)
        slot.leases += 1
        try:
            engine = await self._ensure_loaded(slot)
        except BaseException:
            self._release(slot)
            raise
        slot.last_used = self._clock()
        return Lease(self, slot, engine)

    def _release(self, slot: Slot) -> None:
        slot.leases -= 1
        slot.last_used = self._clock()
        self._changed()

    async def _ensure_loaded(self, slot: Slot) -> Engine:
        while True:
            if slot.state is State.LOADED and slot.engine is not None and slot.engine.alive:
                return slot.engine
            if slot.state is State.FAILED:
                remaining = slot.failed_until - self._clock()
                if remaining > 0:
                    raise load_failed(slot.model_id, slot.failure, remaining)
            if slot.load_task is None:
                slot.load_task = asyncio.create_task(self._load(slot))
                slot.load_task.add_done_callback(_consume_exception)
            # Shielded: a client that goes away does not cancel a load others may be waiting on.
            await asyncio.shield(slot.load_task)

    # -- loading and unloading -----------------------------------------------------------------

    async def _load(self, slot: Slot) -> None:
        try:
            await self._make_room(slot)
            engine = self._factory(slot.model_id, slot.entry)
            engine.on_exit(lambda reason: self._on_exit(slot, engine, reason))
            slot.engine = engine
            started = time.perf_counter()
            await engine.start()
            slot.state = State.LOADED
            slot.last_used = self._clock()
            seconds = time.perf_counter() - started
            log.info("loaded %s in %.2fs", slot.model_id, seconds)
            self.observer.model_loaded(slot.model_id, seconds)
            await self._rebalance(keep=slot)
        except GatewayError as exc:
            slot.engine = None
            if exc.code == "model_load_failed":
                self.observer.model_load_failed(slot.model_id)
                slot.state = State.FAILED
                slot.failure = exc.message.split(": ", 1)[-1]
                slot.failed_until = self._clock() + self.settings.gateway.failure_cooldown
                log.error("loading %s failed: %s", slot.model_id, slot.failure)
            else:
                slot.state = State.UNLOADED
            raise
        except BaseException:
            if slot.engine is not None:
                await slot.engine.stop()
            slot.engine = None
            slot.state = State.UNLOADED
            raise
        finally:
            slot.load_task = None
            self._changed()

    async def _make_room(self, slot: Slot) -> None:
        wait = self.settings.gateway.room_wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait  # a real wait, whatever clock drives LRU and TTL
        need = slot.facts.estimate.total
        while True:
            plan = plan_room(need, self._residents(), self.budget, self.settings.gateway.max_loaded)
            if plan.never:
                raise never_fits(slot.model_id, need, self.budget)
            if not plan.wait:
                # Claim the room before the first await so no other load can plan with it.
                slot.state = State.LOADING
                victims = [self._slots[model_id] for model_id in plan.evict]
                await asyncio.gather(*(self._unload(v, "lru") for v in victims))
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise no_room(slot.model_id, wait, ROOM_RETRY_AFTER)
            change = self._change
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(change.wait(), remaining)

    def _residents(self) -> list[Resident]:
        return [
            Resident(
                model_id=s.model_id,
                bytes=s.memory_bytes,
                busy=s.leases > 0 or s.state is State.LOADING or s in self._retiring,
                pinned=s.entry.pinned,
                last_used=s.last_used,
            )
            for s in [*self._slots.values(), *self._retiring]
            if s.resident
        ]

    async def _rebalance(self, keep: Slot) -> None:
        """A model measured larger than its estimate may push the total over budget: evict idle ones."""
        others = [r for r in self._residents() if r.model_id != keep.model_id]
        plan = plan_room(keep.memory_bytes, others, self.budget, self.settings.gateway.max_loaded)
        if plan.evict and not plan.wait:
            await asyncio.gather(*(self._unload(self._slots[m], "lru") for m in plan.evict))

    async def _unload(self, slot: Slot, reason: str) -> None:
        engine = slot.engine
        if engine is not None:
            slot.last_measured = engine.measured_bytes() or slot.last_measured
        slot.engine = None
        slot.state = State.UNLOADED
        self._changed()
        if engine is not None:
            log.info("unloading %s (%s)", slot.model_id, reason)
            self.observer.model_unloaded(slot.model_id, reason)
            await engine.stop()

    def _on_exit(self, slot: Slot, engine: Engine, reason: str) -> None:
        if slot.engine is engine:
            log.warning("model %s lost its worker (%s); the next request starts a new one", slot.model_id, reason)
            self.observer.worker_crashed(slot.model_id)
            slot.engine = None
            slot.state = State.UNLOADED
            self._spawn(engine.stop())
            self._changed()

    async def _warm(self, slot: Slot) -> None:
        try:
            await self.warm(slot.model_id)
        except GatewayError as exc:
            log.error("could not load pinned model %s: %s", slot.model_id, exc.message)

    # -- operations (admin endpoints, reload) --------------------------------------------------

    def pinned_not_loaded(self) -> list[str]:
        """Pinned models not loaded yet: the gateway is ready when there are none."""
        return [s.model_id for s in self._slots.values() if s.entry.pinned and s.state is not State.LOADED]

    def idle_expiry(self, slot: Slot) -> float | None:
        """Seconds until the TTL unloads an idle model, or None."""
        if slot.state is not State.LOADED or slot.leases or slot.entry.pinned or slot.entry.ttl is None:
            return None
        return max(0.0, slot.entry.ttl - (self._clock() - slot.last_used))

    async def warm(self, name: str) -> Slot:
        """Load a model without a request (admin)."""
        lease = await self.acquire(name)
        lease.release()
        return self.resolve(name)

    async def unload(self, name: str, *, force: bool = False, reason: str = "admin") -> None:
        """Unload a model; waits for its requests to finish unless `force` (they then fail)."""
        slot = self.resolve(name)
        if force:
            await self._unload(slot, reason)
        else:
            await self._drain(slot, reason)

    async def _drain(self, slot: Slot, reason: str) -> None:
        slot.draining = slot.blocked = True
        self._changed()
        try:
            await self._wait_idle(slot)
            await self._unload(slot, reason)
        finally:
            slot.draining = slot.blocked = False
            self._changed()

    async def _wait_idle(self, slot: Slot) -> None:
        """Until no request holds the model and no load of it is under way."""
        while slot.leases > 0 or slot.load_task is not None:
            await self._change.wait()

    def apply(self, settings: Settings, facts: dict[str, ModelFacts], budget: int) -> dict[str, list[str]]:
        """Switch to a new configuration (reload). New models appear; removed ones drain and unload;
        changed ones drain and reload on their next request; unchanged loaded ones stay loaded."""
        old = self._slots
        added = [m for m in settings.models if m not in old]
        removed = [m for m in old if m not in settings.models]
        changed = [m for m in settings.models if m in old and old[m].entry != settings.models[m]]
        unchanged = [m for m in settings.models if m in old and m not in changed]
        slots = {m: old[m] for m in unchanged}
        for model_id in added:
            slots[model_id] = Slot(model_id, settings.models[model_id], facts[model_id])
        for model_id in changed:
            # The old slot keeps serving its in-flight requests, then unloads; the new one waits for it.
            stale = old[model_id]
            fresh = Slot(model_id, settings.models[model_id], facts[model_id], blocked=True)
            slots[model_id] = fresh
            self._spawn(self._retire(stale))
        for model_id in removed:
            self._spawn(self._retire(old[model_id]))
        self.settings = settings
        self.budget = budget
        self._slots = slots
        self.cpu.capacity = CpuThreads(settings.gateway.cpu_threads).capacity
        self._changed()
        for model_id in added:
            if settings.models[model_id].pinned:
                self._spawn(self._warm(slots[model_id]))
        return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}

    async def _retire(self, stale: Slot) -> None:
        """Unload a replaced or removed model once its admitted requests finish; the version now
        configured (if any) opens to requests when no older version of it is left."""
        stale.draining = True
        self._retiring.append(stale)
        current = None
        try:
            await self._wait_idle(stale)
            await self._unload(stale, "reload")
        finally:
            self._retiring.remove(stale)
            stale.draining = False
            current = self._slots.get(stale.model_id)
            if current is not None and not any(r.model_id == stale.model_id for r in self._retiring):
                current.blocked = False
            self._changed()
        if current is not None and not current.blocked and current.entry.pinned:
            await self._warm(current)

    # -- TTL -----------------------------------------------------------------------------------

    def expired(self) -> list[Slot]:
        now = self._clock()
        return [
            s
            for s in self._slots.values()
            if s.state is State.LOADED
            and s.leases == 0
            and not s.entry.pinned
            and s.entry.ttl is not None
            and now - s.last_used >= s.entry.ttl
        ]

    async def reap(self) -> list[str]:
        """Unload models idle longer than their TTL; returns their ids."""
        victims = self.expired()
        await asyncio.gather(*(self._unload(s, "ttl") for s in victims))
        return [s.model_id for s in victims]

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:
                log.exception("TTL reaper failed")

    # -- helpers -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _consume_exception(task: asyncio.Task[None]) -> None:
    # Every waiter sees the failure through shield(); this keeps asyncio from reporting it as lost
    # when all of them went away.
    if not task.cancelled():
        task.exception()
