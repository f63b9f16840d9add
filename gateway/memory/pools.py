"""Memory pools: host RAM and one per GPU, vectors of bytes over them, and each pool's budget.

A model needs a `Vector` (bytes per pool) and fits when every pool it touches has room. GPU pools
are named as users see them (`cuda0`, `cuda1`, `rocm0`), in the order the driver's management
library lists the devices, and keyed internally by UUID so a name always means the same card.
Pure values only: reading the devices is `inventory.py`, deciding placements is `planner.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

HOST = "host"
AUTO_HOST_FRACTION = 0.8  # "auto" host budget: this share of host memory (a lower cgroup limit included)


@dataclass(frozen=True)
class Vector:
    """Bytes per pool; pools not named hold 0."""

    entries: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, amounts: Mapping[str, int] | Iterable[tuple[str, int]]) -> Vector:
        merged: dict[str, int] = {}
        for pool, size in amounts.items() if isinstance(amounts, Mapping) else amounts:
            merged[pool] = merged.get(pool, 0) + int(size)
        return cls(tuple(sorted((p, n) for p, n in merged.items() if n != 0)))

    def __getitem__(self, pool: str) -> int:
        return dict(self.entries).get(pool, 0)

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(p for p, n in self.entries if n > 0)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.entries)

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def __add__(self, other: Vector) -> Vector:
        return Vector.of([*self.entries, *other.entries])

    def __sub__(self, other: Vector) -> Vector:
        return Vector.of([*self.entries, *((p, -n) for p, n in other.entries)])


def total_of(vectors: Iterable[Vector]) -> Vector:
    result = Vector()
    for vector in vectors:
        result = result + vector
    return result


@dataclass(frozen=True)
class Device:
    """One GPU as the management library reports it."""

    name: str  # cuda0, rocm0: what users write in models.yaml and see in /metrics
    uuid: str  # stable across reboots and driver re-enumeration: CUDA_VISIBLE_DEVICES takes it
    index: int
    description: str
    total: int
    free: int
    used: int
    # pid → bytes, where the driver shows other processes' use; None when it does not
    processes: tuple[tuple[int, int], ...] | None = None

    def used_by(self, pids: Iterable[int]) -> int | None:
        """Bytes the given processes hold on this device, or None when per-process use is not visible."""
        if self.processes is None:
            return None
        wanted = set(pids)
        return sum(size for pid, size in self.processes if pid in wanted)


@dataclass(frozen=True)
class PoolState:
    """A pool at one moment: its budget and, for a GPU, what the device reports."""

    name: str
    budget: int
    total: int | None = None  # device memory; None for the host pool
    free: int | None = None  # what the device reports free now; None: not checked (host)
    reserve: int = 0  # left free on the device
    description: str = ""
    uuid: str | None = None

    @property
    def is_gpu(self) -> bool:
        return self.name != HOST

    @property
    def limit(self) -> int:
        """The most our models may ever hold here."""
        if self.total is None:
            return self.budget
        return max(0, min(self.budget, self.total - self.reserve))

    def available(self, held: int, freed: int = 0) -> int:
        """Room for another model, given what our models hold: min(budget - held, free - reserve).
        `freed`: bytes our models gave back since `free` was read (unloads the device will show)."""
        room = self.budget - held
        if self.free is not None:
            room = min(room, self.free + freed - self.reserve)
        return room


def _resolve(spec: int | str | None, total: int, auto: int) -> int:
    if spec is None or spec == "auto":
        return auto
    if isinstance(spec, str) and spec.endswith("%"):
        return int(total * float(spec[:-1]) / 100)
    return int(spec)


def _host_budget(budgets: Mapping[str, int | str], memory_budget: int | None, host_total: int) -> int:
    """The host pool's budget: budgets.host, else memory_budget, else 80% of host memory (physical,
    or a lower cgroup limit)."""
    spec = budgets.get(HOST, memory_budget)
    return _resolve(spec, host_total, int(host_total * AUTO_HOST_FRACTION))


def resolve_pools(
    devices: Sequence[Device],
    budgets: Mapping[str, int | str],
    memory_budget: int | None,
    host_total: int,
    gpu_reserve: int,
) -> tuple[PoolState, ...]:
    """Every pool with its budget: the host, then each GPU (by name, UUID, `gpu`, else auto)."""
    pools = [PoolState(HOST, _host_budget(budgets, memory_budget, host_total), description="host RAM")]
    for device in devices:
        spec = budgets.get(device.name, budgets.get(device.uuid, budgets.get("gpu")))
        budget = _resolve(spec, device.total, max(0, device.total - gpu_reserve))
        pools.append(
            PoolState(device.name, budget, device.total, device.free, gpu_reserve, device.description, device.uuid)
        )
    return tuple(pools)


def unknown_budget_names(budgets: Mapping[str, int | str], devices: Sequence[Device]) -> list[str]:
    """Budgets naming a GPU this machine does not have (worth a warning, not an error: one file may
    serve several machines)."""
    known = {HOST, "gpu"} | {d.name for d in devices} | {d.uuid for d in devices}
    return [name for name in budgets if name not in known]
