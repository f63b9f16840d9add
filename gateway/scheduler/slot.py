"""The mutable record of one model version. Private to the scheduler package: others get `SlotView`s."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.config import ModelEntry
from gateway.engine.base import Engine
from gateway.memory.facts import ModelFacts
from gateway.memory.planner import Placement
from gateway.memory.pools import Vector
from gateway.scheduler.fairness import KeyTurns, Tenant, Turn, TurnQueue, next_start, preemption_victim
from gateway.scheduler.views import HOST_POOL, SlotView, State, TenantView


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
    queue: TurnQueue = field(default_factory=TurnQueue)  # generating holds waiting for a turn, in policy order
    turns: list[Turn] = field(default_factory=list)  # the holds running
    preemptions: int = 0  # batch holds paused for an interactive one, since start
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
    device_measured: dict[str, int] | None = None  # per GPU pool, the most measured since the load
    decoded: bool = False  # measured again after its first generation (cuBLAS, workspaces, CUDA graphs)

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
        """Bytes per pool: the host as above; a GPU, like the host, the larger of the estimate and
        the most measured there (NVML's per-process figure, else llama.cpp's buffers and a context):
        a measurement right after load misses what the first decode allocates (cuBLAS's handle and
        workspace, lazily loaded kernels, CUDA graphs), and a later one may come too late."""
        devices = dict(self.estimate.entries)
        for pool, measured in (self.device_measured or {}).items():
            devices[pool] = max(devices.get(pool, 0), measured)
        devices[HOST_POOL] = self.host_bytes
        return Vector.of(devices)

    def measured_on_devices(self, measured: dict[str, int] | None) -> None:
        """A new device measurement: the most seen per pool is kept (memory a worker allocated once,
        llama.cpp's pools and caches, it keeps)."""
        if measured is None:
            return
        before = self.device_measured or {}
        self.device_measured = {p: max(n, before.get(p, 0)) for p, n in {**before, **measured}.items()}

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
            tenants=self.tenants(),
            preemptions=self.preemptions,
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

    # -- turns: at most `parallel` holds run at once; the others wait in the order fairness.py sets --

    async def take_turn(self, tenant: Tenant, keys: KeyTurns, now: float, aging: float) -> Turn:
        """Wait for a turn (the hold is counted in `waiting` already). Cancelled, it leaves no trace."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def given() -> None:
            if not future.done():
                future.set_result(None)

        turn = Turn(tenant, now, given)
        self.queue.add(turn)
        self.pass_turns(keys, now, aging)
        try:
            await future
        except asyncio.CancelledError:
            if turn.running:
                self.end_turn(turn, keys, now, aging)  # given the turn just as the request went away
            else:
                self.queue.remove(turn)
                self.waiting -= 1
            raise
        return turn

    def end_turn(self, turn: Turn, keys: KeyTurns, now: float, aging: float) -> None:
        """The hold is released: running, its turn passes on; paused, it leaves the queue."""
        if turn.running:
            turn.running = False
            self.turns.remove(turn)
            self.running -= 1
            keys.add(turn.tenant, -1)
        elif turn in self.queue:
            self.queue.remove(turn)
            self.waiting -= 1
        turn.pause = turn.resume = None
        self.pass_turns(keys, now, aging)

    def pass_turns(self, keys: KeyTurns, now: float, aging: float) -> None:
        """Hand free turns to waiting holds (also after a reload raised `parallel`), pausing the newest
        batch holds when interactive ones wait and every turn is taken."""
        parallel = self.entry.runtime.parallel
        wanted = self.queue.interactive_waiting(keys) - max(0, parallel - self.running)
        while wanted > 0 and (victim := preemption_victim(self.turns)) is not None:
            wanted -= 1
            if victim.pause is None or not victim.pause():
                victim.pause = None  # its generation has ended: it is about to release its turn anyway
                continue
            victim.running, victim.paused, victim.since = False, True, now
            victim.on_turn = victim.resume or (lambda: None)
            self.turns.remove(victim)
            self.running -= 1
            self.waiting += 1
            self.preemptions += 1
            keys.add(victim.tenant, -1)
            self.queue.add(victim)
        while self.running < parallel:
            turn = self.queue.pick(self._share(), keys, now, aging)
            if turn is None:
                return
            turn.running, turn.paused, turn.started = True, False, next_start()
            self.turns.append(turn)
            self.waiting -= 1
            self.running += 1
            keys.add(turn.tenant, 1)
            turn.on_turn()

    def _share(self) -> dict[str, int]:
        share: dict[str, int] = {}
        for turn in self.turns:
            share[turn.tenant.key] = share.get(turn.tenant.key, 0) + 1
        return share

    def tenants(self) -> tuple[TenantView, ...]:
        """Who holds and who waits for this model's turns, per key and priority."""
        counts: dict[tuple[str, str], list[int]] = {}
        for turn in self.turns:
            counts.setdefault((turn.tenant.key, turn.tenant.priority.value), [0, 0, 0])[0] += 1
        for turn in self.queue:
            entry = counts.setdefault((turn.tenant.key, turn.tenant.priority.value), [0, 0, 0])
            entry[1] += 1
            entry[2] += turn.paused
        return tuple(TenantView(key, priority, *c) for (key, priority), c in sorted(counts.items()))
