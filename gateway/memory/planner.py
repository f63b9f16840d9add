"""Where a model goes and what must be unloaded first: pure decisions over memory vectors.

Everything here is a function of immutable values (pools with their budgets and what the devices
report, the resident models with their vectors, the ways the new model could be placed), so the
scheduler can ask, act, and be tested without a GPU. The rules:

- A model fits when every pool it touches has room: min(budget - held by our models,
  device free - reserve). Memory other processes use shows up as less free.
- Placement: on one GPU first (the configured `main_gpu`, else the one with the most room), across
  several (layer split in proportion to room) when no single one has room, or always with
  `placement: spread` or an explicit `tensor_split`. Partial offload only when configured.
- Eviction frees only models that hold memory in a pool that is short, least recently used first,
  among idle and unpinned models; the option needing the fewest evictions wins.
- After a load, measured figures replace the estimate; a pool then over its limit is rebalanced the
  same way. A load that runs out of device memory evicts on that device and is retried once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.memory.pools import PoolState, Vector, total_of


@dataclass(frozen=True)
class Placement:
    """Where a model's layers go: GPU pools in the order the worker sees them, with their shares."""

    devices: tuple[str, ...] = ()
    split: tuple[float, ...] | None = None  # share of the offloaded layers per device; None: one device
    n_gpu_layers: int = 0  # -1: all

    @property
    def on_gpu(self) -> bool:
        return bool(self.devices) and self.n_gpu_layers != 0

    def describe(self) -> str:
        if not self.on_gpu:
            return "host"
        layers = "all layers" if self.n_gpu_layers < 0 else f"{self.n_gpu_layers} layers"
        if len(self.devices) == 1:
            return f"{self.devices[0]} ({layers})"
        shares = ", ".join(f"{d} {s:.2f}" for d, s in zip(self.devices, self.split or (), strict=False))
        return f"spread over {', '.join(self.devices)} ({layers}; split {shares})"


@dataclass(frozen=True)
class Resident:
    """A loaded (or loading) model as the planner sees it."""

    model_id: str
    vector: Vector  # estimated until loaded, then measured
    busy: bool = False  # held by requests, loading or draining: never chosen (as scheduler.eviction)
    pinned: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class Option:
    """One way to place the model, with what it needs per pool placed that way."""

    placement: Placement
    need: Vector


@dataclass(frozen=True)
class LoadPlan:
    option: Option
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shortfall:
    pool: str
    need: int
    available: int
    free: int | None  # what the device reports free (None for the host pool)
    budget: int

    def describe(self) -> str:
        mib = 2**20
        free = f", {self.free / mib:.0f} MiB free on the device" if self.free is not None else ""
        return (
            f"{self.pool} needs {self.need / mib:.0f} MiB, {max(self.available, 0) / mib:.0f} MiB available "
            f"(budget {self.budget / mib:.0f} MiB{free})"
        )


@dataclass(frozen=True)
class NoRoom:
    """No option fits. `never`: not even with every unpinned model unloaded (a configuration
    problem); otherwise busy models or other processes hold the memory for now."""

    never: bool
    shortfall: Shortfall | None  # the first pool short of room; None when the cap on models is the reason
    max_loaded: int | None = None

    def describe(self) -> str:
        if self.shortfall is not None:
            return self.shortfall.describe()
        return f"max_loaded ({self.max_loaded}) models are loaded and none can be unloaded"


@dataclass(frozen=True)
class ModelPlacementConfig:
    """What models.yaml says about where one model may go."""

    n_gpu_layers: int = 0
    devices: tuple[str, ...] | None = None  # names or UUIDs; None: any GPU
    main_gpu: int | None = None
    tensor_split: tuple[float, ...] | None = None
    policy: str = "pack"  # or "spread"


def held_by(residents: Sequence[Resident]) -> Vector:
    return total_of(r.vector for r in residents)


def shortfalls(need: Vector, pools: Sequence[PoolState], held: Vector, freed: Vector | None = None) -> list[Shortfall]:
    """The pools `need` touches that lack room for it."""
    freed = freed or Vector()
    by_name = {p.name: p for p in pools}
    result = []
    for name in need.pools:
        pool = by_name.get(name)
        if pool is None:  # a device this machine does not have: nothing fits there
            result.append(Shortfall(name, need[name], 0, None, 0))
            continue
        room = pool.available(held[name], freed[name])
        if need[name] > room:
            result.append(Shortfall(name, need[name], room, pool.free, pool.budget))
    return result


def _evictable(residents: Sequence[Resident], keep: frozenset[str]) -> list[Resident]:
    return sorted(
        (r for r in residents if not r.busy and not r.pinned and r.model_id not in keep), key=lambda r: r.last_used
    )


def evictions_for(
    need: Vector,
    pools: Sequence[PoolState],
    residents: Sequence[Resident],
    max_loaded: int | None = None,
    keep: frozenset[str] = frozenset(),
) -> tuple[str, ...] | None:
    """The models to unload (LRU among idle, unpinned, and only those holding memory in a pool that
    is short) so that `need` fits; None when that is impossible now."""
    remaining = list(residents)
    held = held_by(residents)
    evicted: list[str] = []
    while True:
        freed = held - held_by(remaining)
        short = {s.pool for s in shortfalls(need, pools, held_by(remaining), freed)}
        over_count = max_loaded is not None and len(remaining) >= max_loaded
        if not short and not over_count:
            return tuple(evicted)
        candidates = [r for r in _evictable(remaining, keep) if (not short or any(r.vector[p] > 0 for p in short))]
        if not candidates:
            return None
        victim = candidates[0]
        remaining.remove(victim)
        evicted.append(victim.model_id)


def _never_fits(need: Vector, pools: Sequence[PoolState], residents: Sequence[Resident]) -> Shortfall | None:
    """A pool the model cannot fit even with every unpinned model gone and the device otherwise empty."""
    pinned = held_by([r for r in residents if r.pinned])
    by_name = {p.name: p for p in pools}
    for name in need.pools:
        pool = by_name.get(name)
        limit = pool.limit - pinned[name] if pool else 0
        if need[name] > limit:
            return Shortfall(name, need[name], limit, pool.free if pool else None, pool.budget if pool else 0)
    return None


def plan_load(
    options: Sequence[Option],
    pools: Sequence[PoolState],
    residents: Sequence[Resident],
    max_loaded: int | None = None,
) -> LoadPlan | NoRoom:
    """The first option that fits as things are; else the one needing the fewest evictions (then the
    fewest bytes evicted); else why not."""
    held = held_by(residents)
    if max_loaded is None or len(residents) < max_loaded:
        for option in options:
            if not shortfalls(option.need, pools, held):
                return LoadPlan(option)
    best: tuple[tuple[int, int, int], LoadPlan] | None = None
    sizes = {r.model_id: r.vector.total for r in residents}
    for rank, option in enumerate(options):
        evict = evictions_for(option.need, pools, residents, max_loaded)
        if evict is None:
            continue
        key = (len(evict), sum(sizes[m] for m in evict), rank)
        if best is None or key < best[0]:
            best = (key, LoadPlan(option, evict))
    if best is not None:
        return best[1]
    if max_loaded is not None and sum(r.pinned for r in residents) >= max_loaded:
        return NoRoom(True, None, max_loaded)
    never = [_never_fits(o.need, pools, residents) for o in options]
    if never and all(s is not None for s in never):
        return NoRoom(True, never[0])
    short = shortfalls(options[0].need, pools, held)
    return NoRoom(False, short[0] if short else None, max_loaded)


def placement_options(
    config: ModelPlacementConfig,
    pools: Sequence[PoolState],
    held: Vector,
    need_of: Callable[[Placement], Vector],
) -> list[Option]:
    """The ways to place a model, most preferred first."""
    gpus = [p for p in pools if p.is_gpu]
    if config.devices is not None:
        allowed = {name: i for i, name in enumerate(config.devices)}
        gpus = [p for p in gpus if p.name in allowed or p.uuid in allowed]
        gpus.sort(key=lambda p: allowed.get(p.name, allowed.get(p.uuid or "", 0)))
    if config.n_gpu_layers == 0 or not gpus:
        return [Option(Placement(), need_of(Placement()))]
    layers = config.n_gpu_layers

    def option(devices: Sequence[PoolState], split: tuple[float, ...] | None) -> Option:
        placement = Placement(tuple(p.name for p in devices), split, layers)
        return Option(placement, need_of(placement))

    if config.tensor_split is not None:
        shares = config.tensor_split[: len(gpus)]
        return [option(gpus[: len(shares)], tuple(shares))]
    room = {p.name: max(p.available(held[p.name]), 0) for p in gpus}
    total_room = sum(room.values())
    proportional = tuple((room[p.name] / total_room) if total_room else 1.0 for p in gpus)
    spread = option(gpus, proportional) if len(gpus) > 1 else None
    if config.policy == "spread" and spread is not None:
        return [spread]
    main = f"cuda{config.main_gpu}" if config.main_gpu is not None else None
    singles = sorted(gpus, key=lambda p: (p.name != main, -room[p.name], p.name))
    return [option([p], None) for p in singles] + ([spread] if spread is not None else [])


def rebalance(pools: Sequence[PoolState], residents: Sequence[Resident]) -> tuple[str, ...]:
    """Idle models to unload because measured figures put a pool over its limit (or the device below
    its reserve): LRU among idle, unpinned models holding memory in that pool."""
    remaining = list(residents)
    held = held_by(residents)
    evicted: list[str] = []
    while True:
        now = held_by(remaining)
        freed = held - now
        over = {
            p.name
            for p in pools
            if now[p.name] > p.limit or (p.free is not None and p.free + freed[p.name] < p.reserve)
        }
        candidates = [r for r in _evictable(remaining, frozenset()) if any(r.vector[p] > 0 for p in over)]
        if not over or not candidates:
            return tuple(evicted)
        remaining.remove(candidates[0])
        evicted.append(candidates[0].model_id)


def after_oom(
    device: str, need: int | None, pool: PoolState, residents: Sequence[Resident], keep: frozenset[str]
) -> tuple[str, ...]:
    """What to unload on `device` after a load ran out of memory there: LRU idle, unpinned models on
    that device until the device would have `need` free above its reserve (all of them when the
    failed allocation's size is unknown)."""
    freed = 0
    evicted: list[str] = []
    for resident in _evictable(residents, keep):
        if resident.vector[device] <= 0:
            continue
        if need is not None and pool.free is not None and pool.free + freed - pool.reserve >= need:
            break
        evicted.append(resident.model_id)
        freed += resident.vector[device]
    return tuple(evicted)
