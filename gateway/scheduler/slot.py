"""The mutable record of one model version. Private to the scheduler package: others get `SlotView`s."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from gateway.config import ModelEntry
from gateway.engine.base import Engine
from gateway.memory.facts import ModelFacts
from gateway.memory.planner import Placement
from gateway.memory.pools import Vector
from gateway.scheduler.views import HOST_POOL, SlotView, State


@dataclass(eq=False)
class Slot:
    model_id: str
    entry: ModelEntry
    facts: ModelFacts
    state: State = State.UNLOADED
    engine: Engine | None = None
    running: int = 0  # holds that took one of the `parallel` turns
    waiting: int = 0  # generating holds not running yet (the model loads, or every turn is taken)
    quick: int = 0  # holds for calls that do not generate
    turns: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    last_used: float = 0.0
    load_task: asyncio.Task[None] | None = None
    abort_load: str | None = None  # why the load under way must stop (a forced unload)
    stopping: asyncio.Task[None] | None = None  # the worker being stopped; the slot stays UNLOADING until it exits
    failed_until: float = 0.0
    failure: str = ""
    draining: bool = False
    retiring: bool = False
    after_predecessor: bool = False  # a reload replaced it: opens once the older version has unloaded
    last_measured: int | None = None
    placement: Placement = field(default_factory=Placement)  # where the last load put it (host: no GPU)
    need: Vector | None = None  # the estimate per pool for that placement
    default_need: Vector | None = None  # the estimate where it would go now (before its first load)
    device_measured: dict[str, int] | None = None  # per GPU pool, measured after the load

    @property
    def holds(self) -> int:
        return self.running + self.waiting + self.quick

    @property
    def admitting(self) -> bool:
        """New holds may be taken (else they wait for a drain or an older version to finish)."""
        return not self.draining and not self.after_predecessor

    @property
    def measured_bytes(self) -> int | None:
        measured = self.engine.measured_bytes() if self.engine is not None else None
        return measured if measured is not None else self.last_measured

    @property
    def estimate(self) -> Vector:
        """What the model needs per pool where it is (or would be) placed, before measuring."""
        return self.need or self.default_need or Vector.of({HOST_POOL: self.facts.estimate.total})

    @property
    def host_bytes(self) -> int:
        """Host memory the model may hold: at least what was measured, and never less than the
        estimate, which counts memory a worker allocates later (the second context of the first n > 1
        request)."""
        measured = self.measured_bytes
        estimate = self.estimate[HOST_POOL]
        return estimate if measured is None else max(measured, estimate)

    @property
    def vector(self) -> Vector:
        """Bytes per pool: the host as above; a GPU what was measured there after load (llama.cpp's
        buffers and the worker's context, or NVML's per-process figure), else the estimate."""
        devices = dict(self.estimate.entries)
        devices.update(self.device_measured or {})
        devices[HOST_POOL] = self.host_bytes
        return Vector.of(devices)

    def view(self, now: float) -> SlotView:
        return SlotView(
            model_id=self.model_id,
            entry=self.entry,
            facts=self.facts,
            state=self.state,
            running=self.running,
            waiting=self.waiting,
            quick=self.quick,
            last_used=self.last_used,
            draining=self.draining,
            retiring=self.retiring,
            measured_bytes=self.measured_bytes,
            idle_expires_in=self._idle_expiry(now),
            failure=self.failure,
            pools=self.vector.as_dict(),
            batch=self.engine.batch_state() if self.engine is not None else None,
            placement=self.placement.describe(),
            measured_pools=self._measured_pools(),
        )

    def _measured_pools(self) -> dict[str, int] | None:
        measured = self.measured_bytes
        if measured is None and not self.device_measured:
            return None
        return {**({HOST_POOL: measured} if measured is not None else {}), **(self.device_measured or {})}

    def _idle_expiry(self, now: float) -> float | None:
        ttl = self.entry.ttl
        if self.state is not State.LOADED or self.holds or self.entry.pinned or ttl is None or self.retiring:
            return None
        return max(0.0, ttl - (now - self.last_used))

    async def stopped(self) -> None:
        """Until the worker being stopped has exited; a caller cancelled here leaves the stop running."""
        if self.stopping is not None:
            await asyncio.shield(self.stopping)

    # -- turns: at most `parallel` holds run at once, the others wait in order -----------------

    async def take_turn(self) -> None:
        """Move one waiting hold to running, in arrival order. Cancelled, it leaves no trace."""
        if self.running < self.entry.runtime.parallel and not self.turns:
            self.waiting -= 1
            self.running += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.turns.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.end_turn()  # given the turn just as the request went away
            else:
                if turn in self.turns:
                    self.turns.remove(turn)
                self.waiting -= 1
            raise

    def end_turn(self) -> None:
        self.running -= 1
        self.pass_turns()

    def pass_turns(self) -> None:
        """Hand free turns to the longest waiting holds (also after a reload raised `parallel`)."""
        while self.turns and self.running < self.entry.runtime.parallel:
            turn = self.turns.popleft()
            if turn.done():
                continue  # its request was cancelled; it settles its own count
            self.waiting -= 1
            self.running += 1
            turn.set_result(None)
