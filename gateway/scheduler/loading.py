"""Loading a model: one load however many wait, room made by vectors over the memory pools, the
worker placed on its devices, measured after load, and a load that runs out of device memory
evicted for and retried once.

Each step that reads the slots and changes them does so in one synchronous stretch (the device
inventory is read before, never between a read that gates a change and the change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.engine.base import Engine
from gateway.engine.loadlog import to_pools
from gateway.errors import GatewayError, device_out_of_memory, load_failed, model_unloaded, never_fits, no_room
from gateway.memory.footprint import GPU_CONTEXT_BYTES
from gateway.memory.planner import NoRoom, Placement
from gateway.memory.pools import HOST, Vector, total_of
from gateway.scheduler.eviction import after_device_oom, overcommitted, residents, room
from gateway.scheduler.lifecycle import Lifecycle
from gateway.scheduler.slot import Slot
from gateway.scheduler.views import State

log = logging.getLogger(__name__)
ROOM_RETRY_AFTER = 5.0
DEVICE_POLL = 0.5  # how often a load waiting for room reads the GPUs again (other processes free memory too)


class Loading(Lifecycle):
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
                    raise model_unloaded(slot.model_id, reason, "it was loading") from None
                raise

    async def _load(self, slot: Slot) -> None:
        engine: Engine | None = None
        try:
            await self._make_room(slot)
            started = time.perf_counter()
            for attempt in (0, 1):
                if self.devices.gpu:
                    await self.devices.wait_free(slot.estimate, self.settings.gateway.gpu_reserve)
                engine = self._factory(slot.model_id, slot.entry)
                placement = self.devices.worker_placement(slot.placement, self.pools())
                if placement is not None:
                    engine.place(placement)
                engine.on_exit(self._exit_handler(slot, engine))
                slot.engine = engine
                try:
                    await engine.start()
                    break
                except GatewayError:
                    slot.engine = None
                    if not await self._after_oom(slot, engine, attempt):
                        raise
                    engine = None
            slot.state = State.LOADED
            slot.last_used = self._clock()
            seconds = time.perf_counter() - started
            log.info("loaded %s in %.2fs (%s)", slot.model_id, seconds, slot.placement.describe())
            self.observer.model_loaded(slot.model_id, seconds)
            await self._measure(slot)
        except asyncio.CancelledError:
            await self._abandon(slot, engine)
            if slot.abort_load is not None:
                raise model_unloaded(slot.model_id, slot.abort_load, "it was loading") from None
            raise
        except GatewayError as exc:
            slot.engine = None
            slot.state = State.UNLOADED
            if exc.code in ("device_out_of_memory", "model_load_failed"):
                self.observer.model_load_failed(slot.model_id)
            if exc.code == "model_load_failed":  # a full device is not a broken model: no cooldown for it
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

    def _exit_handler(self, slot: Slot, engine: Engine) -> Callable[[str], None]:
        return lambda reason: self._on_exit(slot, engine, reason)

    async def _abandon(self, slot: Slot, engine: Engine | None) -> None:
        """A load stopped part way: its memory counts until its worker has exited."""
        slot.engine = None
        if engine is None:
            slot.state = State.UNLOADED
            return
        self._stop_worker(slot, engine, None)
        await slot.stopped()

    async def _make_room(self, slot: Slot) -> None:
        """Claim the memory for `slot`, unloading idle models, waiting (bounded) for busy ones."""
        wait = self.settings.gateway.room_wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait  # a real wait, whatever clock drives LRU and TTL
        while True:
            await self.devices.refresh()
            snapshot = self.snapshot()
            held = total_of(r.vector for r in residents(snapshot, excluding=slot.model_id))
            options = self.devices.options(slot.entry, slot.facts, self.settings, snapshot.pools, held)
            plan = room(options, snapshot, slot.model_id)
            if isinstance(plan, NoRoom) and plan.never:
                short = plan.shortfall
                if short is None or short.pool == HOST:
                    raise never_fits(slot.model_id, short.need if short else options[0].need[HOST], self.budget)
                raise never_fits(slot.model_id, short.need, short.budget, short.pool)
            if not isinstance(plan, NoRoom):
                # Claimed in the same step as planned: victims take no new holds from here on.
                slot.state = State.LOADING
                slot.placement, slot.need, slot.device_measured = plan.option.placement, plan.option.need, None
                slot.decoded = False
                await self._evict([self._slots[m] for m in plan.evict], "lru")
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise no_room(slot.model_id, wait, ROOM_RETRY_AFTER)
            if self.devices.gpu:
                remaining = min(remaining, DEVICE_POLL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), remaining)

    async def _after_oom(self, slot: Slot, engine: Engine, attempt: int) -> bool:
        """The load failed: when it ran out of device memory, unload idle models on that device, wait
        until the memory shows free, and say whether to try once more; else a 503 naming the device."""
        oom = engine.out_of_memory()
        placement = engine.placement
        if oom is None or placement is None or not placement.devices:
            return False
        device = oom.device or placement.devices[0]
        # The whole load must fit again: what it had allocated there, the allocation that failed, its context.
        report = engine.memory_report()
        logged = to_pools(report, list(placement.devices)).get(device, 0) if report is not None else 0
        need = max(slot.estimate[device], logged + (oom.need or 0) + GPU_CONTEXT_BYTES)
        await self.devices.refresh()
        victims = after_device_oom(self.snapshot(), device, need, slot.model_id) if attempt == 0 else ()
        log.warning("loading %s ran out of memory on %s (%s); unloading %s", slot.model_id, device, oom.line, victims)
        await self._evict([self._slots[m] for m in victims], "device_oom")  # chosen and claimed in one step
        reserve = self.settings.gateway.gpu_reserve
        total = next((p.total for p in self.pools() if p.name == device), None)
        possible = victims or total is None or need + reserve <= total  # else waiting cannot help
        if attempt == 0 and possible:
            visible = await self.devices.wait_free(Vector.of({device: need}), reserve, force=True)
            if visible or victims:
                return True
        await self.devices.refresh()
        raise device_out_of_memory(slot.model_id, device, need, self.devices.free_of(device), ROOM_RETRY_AFTER)

    async def _measure(self, slot: Slot) -> None:
        """Measured per-device figures replace the estimate; a pool they put over its limit is
        rebalanced by unloading idle models there."""
        engine = slot.engine
        if engine is not None and engine.placement is not None and engine.placement.devices:
            report = engine.memory_report()
            if slot.placement.on_gpu and report is not None and set(report.by_device()) == {HOST}:
                self._cannot_offload(slot)
            else:
                await self.devices.refresh()
                if slot.engine is not engine:
                    return  # unloaded meanwhile
                slot.measured_on_devices(self.devices.measure(engine, slot.estimate))
        for model_id in overcommitted(self.snapshot(), keep=slot.model_id):
            self._start_unload(self._slots[model_id], "lru")

    async def _measure_after_decode(self, slot: Slot) -> None:
        """Once, after a GPU model's first generation: what the first decode allocated on the device."""
        if slot.decoded or not slot.placement.on_gpu or slot.state is not State.LOADED:
            return
        slot.decoded = True
        await self.devices.refresh()
        self._remeasure_devices([slot])

    def _remeasure_devices(self, slots: list[Slot] | None = None) -> None:
        """Measure loaded GPU models again from the devices' last reading (after the first decode, and
        on the reaper's timer while they serve); a pool the larger figures put over its limit is
        rebalanced by unloading idle models there."""
        for slot in slots if slots is not None else list(self._slots.values()):
            engine = slot.engine
            if slot.state is not State.LOADED or engine is None or not engine.alive or not slot.placement.on_gpu:
                continue
            slot.measured_on_devices(self.devices.measure(engine, slot.estimate))
            for model_id in overcommitted(self.snapshot(), keep=slot.model_id):
                self._start_unload(self._slots[model_id], "lru")

    def _cannot_offload(self, slot: Slot) -> None:
        """Placed on a GPU, llama.cpp put every buffer in host memory: this llama.cpp build cannot
        offload (the CPU wheel on a GPU machine). From now on only the host pool is budgeted."""
        log.warning(
            "%s was placed on %s but llama.cpp kept every buffer in host memory: this llama.cpp build "
            "cannot offload to GPUs (see `gateway check`); budgeting host memory only from now on",
            slot.model_id,
            ", ".join(slot.placement.devices),
        )
        self.devices.cpu_only()
        for other in (*self._slots.values(), *self._retiring):
            if other.state.resident:
                other.placement, other.need = Placement(), Vector.of({HOST: other.facts.estimate.total})
                other.device_measured = None
        self._place_defaults()


def _consume_exception(task: asyncio.Task[None]) -> None:
    # Every waiter sees the failure through shield(); this keeps asyncio from reporting it as lost
    # when all of them went away.
    if not task.cancelled():
        task.exception()
