"""Loading, unloading, draining and crashes: every change of a slot's `state` and `engine`.

Each method reads the slots and changes them in the same synchronous stretch (no `await` between
a read that gates a mutation and the mutation), so two tasks never act on one stale reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.config import Settings
from gateway.engine.base import Engine, EngineFactory
from gateway.errors import GatewayError, load_failed, never_fits, no_room
from gateway.memory import ModelFacts
from gateway.scheduler.eviction import fits_now
from gateway.scheduler.observer import NoObserver, Observer
from gateway.scheduler.slot import Slot
from gateway.scheduler.views import Snapshot, State

log = logging.getLogger(__name__)
ROOM_RETRY_AFTER = 5.0


def unloaded_while_loading(model: str, reason: str) -> GatewayError:
    return GatewayError(
        503,
        f"Model '{model}' was unloaded ({reason}) while it was loading; retry the request.",
        type="server_error",
        code="model_unloaded",
        retry_after=1.0,
    )


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
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.observer: Observer = observer or NoObserver()
        self._factory = engine_factory
        self._clock = clock
        self._slots = {m: Slot(m, entry, facts[m]) for m, entry in settings.models.items()}
        self._retiring: list[Slot] = []  # replaced or removed by a reload, finishing their requests
        self._change = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

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
        )

    # -- loading -------------------------------------------------------------------------------

    async def _loaded_engine(self, slot: Slot) -> Engine:
        """The slot's engine, loading it first (one load however many wait; not tied to any of them)."""
        while True:
            if slot.state is State.LOADED and slot.engine is not None and slot.engine.alive:
                return slot.engine
            if slot.state is State.UNLOADING:
                await self._change.wait()  # reload it once the old worker is gone
                continue
            if slot.state is State.FAILED:
                remaining = slot.failed_until - self._clock()
                if remaining > 0:
                    raise load_failed(slot.model_id, slot.failure, remaining)
            if slot.load_task is None:
                slot.load_task = asyncio.create_task(self._load(slot))
                slot.load_task.add_done_callback(_consume_exception)
            # Shielded: a client that goes away does not cancel a load others may be waiting on.
            task = slot.load_task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # A load cancelled before its first step ran none of its own handlers (which turn a
                # forced unload into a 503): answer for it here, unless this request itself is cancelled.
                reason = slot.abort_load
                current = asyncio.current_task()
                if task.cancelled() and reason is not None and current is not None and not current.cancelling():
                    raise unloaded_while_loading(slot.model_id, reason) from None
                raise

    async def _load(self, slot: Slot) -> None:
        engine: Engine | None = None
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
            self._rebalance(keep=slot)
        except asyncio.CancelledError:
            await self._abandon(slot, engine)
            if slot.abort_load is not None:
                raise unloaded_while_loading(slot.model_id, slot.abort_load) from None
            raise
        except GatewayError as exc:
            slot.engine = None
            slot.state = State.UNLOADED
            if exc.code == "model_load_failed":
                self.observer.model_load_failed(slot.model_id)
                slot.state = State.FAILED
                slot.failure = exc.message.split(": ", 1)[-1]
                slot.failed_until = self._clock() + self.settings.gateway.failure_cooldown
                log.error("loading %s failed: %s", slot.model_id, slot.failure)
            raise
        except BaseException:
            await self._abandon(slot, engine)
            raise
        finally:
            slot.load_task = None
            slot.abort_load = None
            self._changed()

    async def _abandon(self, slot: Slot, engine: Engine | None) -> None:
        slot.engine = None
        slot.state = State.UNLOADED
        if engine is not None:
            await engine.stop()

    async def _make_room(self, slot: Slot) -> None:
        """Claim the memory for `slot`, unloading idle models, waiting (bounded) for busy ones."""
        wait = self.settings.gateway.room_wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait  # a real wait, whatever clock drives LRU and TTL
        need = slot.facts.estimate.total
        while True:
            plan = fits_now(need, self.snapshot(), slot.model_id)
            if plan.never:
                raise never_fits(slot.model_id, need, self.budget)
            if not plan.wait:
                # Claimed in the same step as planned: victims take no new holds from here on.
                slot.state = State.LOADING
                victims = [self._slots[m] for m in plan.evict]
                for victim in victims:
                    victim.state = State.UNLOADING
                await asyncio.gather(*(self._unload(v, "lru") for v in victims))
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise no_room(slot.model_id, wait, ROOM_RETRY_AFTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), remaining)

    def _rebalance(self, keep: Slot) -> None:
        """A model measured larger than its estimate may push the total over budget: evict idle ones."""
        plan = fits_now(keep.memory_bytes, self.snapshot(), keep.model_id)
        if plan.evict and not plan.wait:
            for model_id in plan.evict:
                self._start_unload(self._slots[model_id], "lru")

    # -- unloading -----------------------------------------------------------------------------

    def _start_unload(self, slot: Slot, reason: str) -> None:
        """Mark the slot unloading now (no new holds), stop its worker in the background."""
        slot.state = State.UNLOADING
        self._in_background(self._unload(slot, reason))

    async def _unload(self, slot: Slot, reason: str) -> None:
        engine = slot.engine
        if engine is not None:
            slot.last_measured = engine.measured_bytes() or slot.last_measured
        slot.engine = None
        slot.state = State.UNLOADING
        self._changed()
        if engine is not None:
            log.info("unloading %s (%s)", slot.model_id, reason)
            self.observer.model_unloaded(slot.model_id, reason)
            try:
                await engine.stop()
            finally:
                if slot.engine is None:  # nobody loaded it again meanwhile
                    slot.state = State.UNLOADED
                self._changed()
        elif slot.state is State.UNLOADING:
            slot.state = State.UNLOADED
            self._changed()

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
        if slot.engine is not None or slot.state is State.LOADED:
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
        if slot.engine is engine:
            log.warning("model %s lost its worker (%s); the next request starts a new one", slot.model_id, reason)
            self.observer.worker_crashed(slot.model_id)
            slot.engine = None
            slot.state = State.UNLOADED
            self._in_background(engine.stop())
            self._changed()

    # -- helpers -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _consume_exception(task: asyncio.Task[None]) -> None:
    # Every waiter sees the failure through shield(); this keeps asyncio from reporting it as lost
    # when all of them went away.
    if not task.cancelled():
        task.exception()
