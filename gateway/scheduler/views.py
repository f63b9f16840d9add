"""What the rest of the gateway may see of the scheduler: immutable snapshots, taken at one instant."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import ModelEntry
from gateway.engine.base import BatchState
from gateway.memory.facts import ModelFacts
from gateway.memory.pools import PoolState

HOST_POOL = "host"  # the memory pool of host RAM; GPU pools (cuda0, ...) join it in `SlotView.pools`


class State(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"  # chosen for eviction or unloaded by an operator: takes no new holds
    FAILED = "failed"

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold, or still holds) memory."""
        return self in (State.LOADING, State.LOADED, State.UNLOADING)

    @property
    def client_value(self) -> str:
        """The four values /v1/models reports (Open WebUI's shape): an unloading model still reads as loaded."""
        return "loaded" if self is State.UNLOADING else self.value


@dataclass(frozen=True)
class TenantView:
    """One key's requests on one model, at one priority: running, waiting, and of those waiting how
    many were paused (preempted) for an interactive request."""

    key: str
    priority: str
    running: int
    waiting: int
    paused: int


@dataclass(frozen=True)
class SlotView:
    """One configured model at one instant. Never changes after it is taken."""

    model_id: str
    entry: ModelEntry
    facts: ModelFacts
    state: State
    running: int  # holds admitted to generate (at most entry.runtime.parallel)
    waiting: int  # holds waiting for a turn (loading, or all `parallel` slots taken)
    quick: int  # holds for calls that do not generate (tokenize, detokenize)
    last_used: float
    draining: bool  # no new holds until the admitted ones finish, then unloaded (admin drain, reload)
    retiring: bool  # an older version replaced or removed by a reload, finishing its requests
    measured_bytes: int | None
    idle_expires_in: float | None  # seconds until the TTL unloads it, when it is idle and has a TTL
    failure: str = ""
    pools: Mapping[str, int] = field(default_factory=dict)  # bytes per memory pool (host, cuda0, ...)
    batch: BatchState | None = None  # the worker's continuous batch as it last reported it
    placement: str = "host"  # where it is (or would be) loaded: "host", "cuda0 (all layers)", ...
    measured_pools: Mapping[str, int] | None = None  # per pool, measured after load (host: RSS)
    tenants: tuple[TenantView, ...] = ()  # who holds and who waits for the turns
    preemptions: int = 0  # batch requests paused for interactive ones, since start

    @property
    def holds(self) -> int:
        """Requests holding the model: it is never evicted while this is above zero."""
        return self.running + self.waiting + self.quick

    @property
    def parallel(self) -> int:
        return self.entry.runtime.parallel

    @property
    def memory_bytes(self) -> int:
        return sum(self.pools.values())

    @property
    def estimated_bytes(self) -> int:
        return self.facts.estimate.total


@dataclass(frozen=True)
class Snapshot:
    """Every model (current and retiring versions) and the memory limits, at one instant."""

    models: tuple[SlotView, ...]  # the configured models, in configuration order
    retiring: tuple[SlotView, ...]  # older versions still finishing their requests after a reload
    budget: int
    max_loaded: int | None
    # Every pool (host first, then each GPU) with its budget and what the device last reported free.
    pools: tuple[PoolState, ...] = ()

    @property
    def memory_used(self) -> int:
        """Host memory our models hold (the `memory_budget` pool)."""
        return self.pool_used(HOST_POOL)

    @property
    def memory_loading(self) -> int:
        """Host memory claimed by models being loaded (see `pool_loading`)."""
        return self.pool_loading(HOST_POOL)

    def pool_used(self, pool: str) -> int:
        """What loaded models (and those being unloaded, until their workers exit) hold in the pool:
        never above its budget, as a load claims its room only once its victims are gone."""
        return sum(v.pools.get(pool, 0) for v in self._all() if v.state in (State.LOADED, State.UNLOADING))

    def pool_loading(self, pool: str) -> int:
        """What models being loaded have claimed in the pool. Counted apart: a load claims its room
        while the models it evicts still hold theirs, so the sum reads over the budget during a swap."""
        return sum(v.pools.get(pool, 0) for v in self._all() if v.state is State.LOADING)

    def _all(self) -> tuple[SlotView, ...]:
        return (*self.models, *self.retiring)
