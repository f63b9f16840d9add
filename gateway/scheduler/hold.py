"""A request's hold on a model: an async context manager that gives everything back exactly once."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from gateway.config import ModelEntry
from gateway.engine.base import Engine
from gateway.scheduler.fairness import OPEN, Tenant, Turn
from gateway.scheduler.slot import Slot
from gateway.scheduler.views import SlotView


class Owner(Protocol):
    """The scheduler, as a hold sees it."""

    async def _admit(self, hold: Hold) -> tuple[Slot, Engine]: ...
    def _release(self, hold: Hold, slot: Slot) -> None: ...
    def now(self) -> float: ...


class Hold:
    """`async with scheduler.hold(name) as held:` — inside, `held.engine` is loaded and will not be
    evicted; a generating hold also has one of the model's `runtime.parallel` turns and a share of
    its CPU grant. However the block ends (finished, failed, cancelled), the hold is released once.

    A streamed response keeps its hold open until the stream ends: the stream's body enters the
    hold itself (see `serving/run.py`), so no other code path has a release to forget.
    """

    def __init__(self, scheduler: Owner, name: str, *, generate: bool, tenant: Tenant = OPEN) -> None:
        self._scheduler = scheduler
        self.name = name
        self.generate = generate
        self.tenant = tenant
        self.turn: Turn | None = None  # a generating hold's turn, once it waits for one
        self.leased = False  # counted in the key's leases over every replica (until released)
        self.lease: str | None = None  # that lease (None: counted on this replica only)
        self._slot: Slot | None = None
        self._engine: Engine | None = None
        self.running = False  # has a turn and CPU (generating holds)
        self.released = False

    async def __aenter__(self) -> Hold:
        if self._slot is not None:
            raise RuntimeError("a hold is entered once")
        self._slot, self._engine = await self._scheduler._admit(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._slot is not None and not self.released:
            self.released = True
            self._scheduler._release(self, self._slot)

    def pausable(self, pause: Callable[[], bool], resume: Callable[[], None]) -> None:
        """The generation running in this hold can be paused and resumed: a batch hold may then give
        its turn to an interactive request and take it back later (its client only sees a pause)."""
        if self.turn is not None and self.turn.running:
            self.turn.pause, self.turn.resume = pause, resume

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the hold was not entered"
        return self._engine

    @property
    def model_id(self) -> str:
        assert self._slot is not None, "the hold was not entered"
        return self._slot.model_id

    @property
    def entry(self) -> ModelEntry:
        """The configuration of the version held (a reload may have changed the current one since)."""
        assert self._slot is not None, "the hold was not entered"
        return self._slot.entry

    def view(self) -> SlotView:
        """The version held, now."""
        assert self._slot is not None, "the hold was not entered"
        return self._slot.view(self._scheduler.now())
