"""Shares the CPU between models that generate at the same time.

llama.cpp's threads spin while they wait for each other, so two models generating at once on cores
they must share run slower together than one after the other. So CPU threads are lent per model:

- A model that generates holds **one grant** of its thread count (at most the capacity), shared by
  all of its running requests (its worker decodes them together with the same threads). The grant
  is returned when the last of them ends.
- A model without a grant waits for free capacity, first come first served.
- **Fairness:** nobody waits longer than `max_wait` seconds. A model still waiting then is granted
  anyway and the CPU is oversubscribed for a while, so a short request to model B is never stuck
  behind a long stream (or a steady stream of requests) on model A.
"""

from __future__ import annotations

import asyncio
import collections
import os
from dataclasses import dataclass, field


def default_threads() -> int:
    """llama-cpp-python's default thread count for a model that does not set one."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(eq=False)
class _Waiter:
    model_id: str
    need: int
    users: int  # requests of this model waiting for the grant together
    granted: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Grant:
    threads: int
    users: int


@dataclass(frozen=True)
class CpuView:
    capacity: int  # 0: no limit
    in_use: int
    grants: dict[str, int] = field(default_factory=dict)  # model -> threads lent to it
    waiting: tuple[str, ...] = ()
    overdue: int = 0  # grants made past the capacity because a model had waited max_wait


class CpuBudget:
    def __init__(self, capacity: int | None, max_wait: float) -> None:
        self.capacity = capacity if capacity is not None else (os.cpu_count() or 1)
        self.max_wait = max_wait
        self.in_use = 0
        self.overdue = 0
        self._grants: dict[str, _Grant] = {}
        self._waiters: collections.deque[_Waiter] = collections.deque()

    def view(self) -> CpuView:
        grants = {m: g.threads for m, g in self._grants.items()}
        waiting = tuple(w.model_id for w in self._waiters)
        return CpuView(self.capacity, self.in_use, grants, waiting, self.overdue)

    async def enter(self, model_id: str, threads: int) -> None:
        """Wait until `model_id` may use the CPU for one more request; pair with leave()."""
        grant = self._grants.get(model_id)
        if grant is not None:
            grant.users += 1  # the model's worker already runs with its threads
            return
        need = self._clamp(threads)
        if not self._waiters and self._fits(need):
            self._lend(model_id, need, 1)
            return
        waiter = next((w for w in self._waiters if w.model_id == model_id), None)
        if waiter is None:
            loop = asyncio.get_running_loop()
            waiter = _Waiter(model_id, need, 0, loop.create_future())
            waiter.timer = loop.call_later(self.max_wait, self._overdue, waiter)
            self._waiters.append(waiter)
        waiter.users += 1
        try:
            await asyncio.shield(waiter.granted)
        except asyncio.CancelledError:
            if waiter.granted.done():
                self.leave(model_id)  # granted just as this request went away
            else:
                waiter.users -= 1
                if waiter.users == 0:
                    self._drop(waiter)
            raise

    def leave(self, model_id: str) -> None:
        grant = self._grants[model_id]
        grant.users -= 1
        if grant.users == 0:
            del self._grants[model_id]
            self.in_use -= grant.threads
            self._wake()

    def resize(self, capacity: int | None) -> None:
        """A reload changed the capacity: waiting needs are clamped to the new one, and whoever
        fits now is woken (without this, a waiter sized for a larger capacity waits forever)."""
        self.capacity = capacity if capacity is not None else (os.cpu_count() or 1)
        for waiter in self._waiters:
            waiter.need = self._clamp(waiter.need)
        self._wake()

    def _clamp(self, threads: int) -> int:
        return max(1, threads if self.capacity <= 0 else min(threads, self.capacity))

    def _fits(self, need: int) -> bool:
        return self.capacity <= 0 or self.in_use + need <= self.capacity

    def _lend(self, model_id: str, need: int, users: int) -> None:
        self._grants[model_id] = _Grant(need, users)
        self.in_use += need

    def _grant(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()
        self._lend(waiter.model_id, waiter.need, waiter.users)
        waiter.granted.set_result(None)

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0].need):
            self._grant(self._waiters[0])

    def _overdue(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self.overdue += 1
            self._grant(waiter)
            self._wake()

    def _drop(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()
        self._wake()
