"""Who gets a model's next turn: interactive before batch, fair shares between keys, aging, and which
batch hold gives its turn up to an interactive one (preemption). Pure: no clock and no event loop of
its own, so the policy is tested with a fake clock.

Order of the waiting holds of one model (`TurnQueue.pick`):
1. class: interactive requests, and batch requests that have waited `aging` seconds, first;
2. fair share: the key holding the fewest of this model's turns (one key's 30 streams do not
   starve another key's 3; two flooding keys converge to even shares);
3. arrival: the oldest first (a preempted hold keeps its place, so it resumes before later ones).
A key at its `max_concurrent` (counted over all models) waits until one of its requests ends; with
`KeyLeases` (shared limits) its requests on other replicas count too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Priority(str, Enum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass(frozen=True)
class Tenant:
    """Who a request belongs to for scheduling: its key (requests without keys are one tenant), the
    priority it runs at, and the key's cap on requests running at once."""

    key: str
    priority: Priority = Priority.INTERACTIVE
    max_concurrent: int | None = None


OPEN = Tenant("anonymous")

_order = itertools.count()


def next_start() -> int:
    return next(_order)


@dataclass(eq=False)
class Turn:
    """One generating hold's claim on its model's turns, from queueing to release. The slot moves it
    between waiting and running; `pause` and `resume` are the hold's generation, set once it began."""

    tenant: Tenant
    since: float  # when it began waiting (a preempted hold: when it was preempted)
    on_turn: Callable[[], None]  # called when it is given a turn
    arrival: int = field(default_factory=lambda: next(_order))
    started: int = -1  # when it last got a turn, in the same order (the newest is preempted first)
    running: bool = False
    paused: bool = False  # gave its turn to an interactive request; resumes when given one again
    pause: Callable[[], bool] | None = None  # False: it cannot be paused (its generation has ended)
    resume: Callable[[], None] | None = None

    def urgent(self, now: float, aging: float) -> bool:
        return self.tenant.priority is Priority.INTERACTIVE or now - self.since >= aging


class KeyTurns:
    """Turns each key holds over every model, for `max_concurrent`."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}

    def may_run(self, tenant: Tenant) -> bool:
        return tenant.max_concurrent is None or self.running.get(tenant.key, 0) < tenant.max_concurrent

    def add(self, tenant: Tenant, n: int) -> None:
        self.running[tenant.key] = self.running.get(tenant.key, 0) + n
        if not self.running[tenant.key]:
            del self.running[tenant.key]


class KeyLeases(Protocol):
    """A key's running requests counted over every replica (`access.leases`)."""

    async def acquire(self, key_id: str, limit: int) -> str | None:
        """Wait until the key may run one more request and count it: a lease to release, or None when
        only this replica's count applies (the shared store is away)."""
        ...

    def release(self, key_id: str, lease: str | None) -> None: ...


class TurnQueue:
    """The waiting turns of one model."""

    def __init__(self) -> None:
        self._waiting: list[Turn] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Turn]:
        return iter(list(self._waiting))

    def __contains__(self, turn: Turn) -> bool:
        return turn in self._waiting

    def add(self, turn: Turn) -> None:
        self._waiting.append(turn)

    def remove(self, turn: Turn) -> None:
        self._waiting.remove(turn)

    def pick(self, share: Mapping[str, int], keys: KeyTurns, now: float, aging: float) -> Turn | None:
        """The turn to run next (taken out of the queue), or None when no waiting key may run."""
        eligible = [t for t in self._waiting if keys.may_run(t.tenant)]
        if not eligible:
            return None
        best = min(eligible, key=lambda t: (not t.urgent(now, aging), share.get(t.tenant.key, 0), t.arrival))
        self._waiting.remove(best)
        return best

    def interactive_waiting(self, keys: KeyTurns) -> int:
        """Interactive requests that could run now (aged batch requests never preempt: they only get
        ahead of younger batch requests)."""
        return sum(1 for t in self._waiting if t.tenant.priority is Priority.INTERACTIVE and keys.may_run(t.tenant))


def preemption_victim(running: Iterable[Turn]) -> Turn | None:
    """The newest batch turn whose generation can be paused, if any."""
    batch = [t for t in running if t.tenant.priority is Priority.BATCH and t.pause is not None]
    return max(batch, key=lambda t: t.started, default=None)
