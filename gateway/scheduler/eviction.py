"""Which models to unload: pure functions of a snapshot, easy to test on their own.

Memory is a vector over pools (host RAM and one pool per GPU). `room` picks where a model goes and
the least recently used idle models to unload so that it fits in every pool it touches (only models
holding memory in a pool that is short are chosen); `overcommitted` picks what to unload when
measured figures put a pool over its limit; `after_device_oom` and `idle_on` what to unload on a
device that ran out of memory; `expired` the idle models whose TTL has run out. The decisions
themselves are `memory/planner.py`'s; this module reads them off a snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.memory.planner import LoadPlan, NoRoom, Option, Resident, after_oom, plan_load, rebalance
from gateway.memory.pools import PoolState, Vector, total_of
from gateway.scheduler.views import SlotView, Snapshot, State


def _vector(view: SlotView) -> Vector:
    return Vector.of(dict(view.pools))


def residents(snapshot: Snapshot, excluding: str | None = None, keep: str | None = None) -> list[Resident]:
    """Every version holding memory; only a loaded current version that nobody holds may be chosen
    (and not `keep`).

    A retiring version counts as busy (it is on its way out anyway), and so does one already
    being unloaded: its memory is not free until its worker has exited.
    """
    found = []
    for view in snapshot.models:
        if view.state.resident and view.model_id != excluding:
            idle = view.state is State.LOADED and view.holds == 0 and not view.draining and view.model_id != keep
            found.append(Resident(view.model_id, _vector(view), not idle, view.entry.pinned, view.last_used))
    for view in snapshot.retiring:
        if view.state.resident:
            found.append(Resident(view.model_id, _vector(view), True, view.entry.pinned, view.last_used))
    return found


def pools_now(snapshot: Snapshot, excluding: str | None = None) -> tuple[PoolState, ...]:
    """The pools as the planner must see them: a device's reported free memory does not show yet
    what a load under way will allocate, so that is taken off."""
    loading = total_of(
        _vector(v)
        for v in (*snapshot.models, *snapshot.retiring)
        if v.state is State.LOADING and v.model_id != excluding
    )
    return tuple(replace(p, free=p.free - loading[p.name]) if p.free is not None else p for p in snapshot.pools)


def room(options: Sequence[Option], snapshot: Snapshot, model_id: str) -> LoadPlan | NoRoom:
    """Where `model_id` goes and what must be unloaded first, in this snapshot."""
    return plan_load(
        options, pools_now(snapshot, model_id), residents(snapshot, excluding=model_id), snapshot.max_loaded
    )


def _over(pools: Sequence[PoolState], held: Vector, freed: Vector) -> set[str]:
    return {
        p.name for p in pools if held[p.name] > p.limit or (p.free is not None and p.free + freed[p.name] < p.reserve)
    }


def overcommitted(snapshot: Snapshot, keep: str) -> tuple[str, ...]:
    """Idle models to unload because measured figures (those of `keep`, just loaded) put a pool over
    its limit; none when unloading all of them would still leave it over (they would go for nothing)."""
    found = residents(snapshot, keep=keep)
    pools = pools_now(snapshot)
    victims = rebalance(pools, found)
    held = total_of(r.vector for r in found)
    freed = total_of(r.vector for r in found if r.model_id in victims)
    return victims if victims and not _over(pools, held - freed, freed) else ()


def after_device_oom(snapshot: Snapshot, device: str, need: int | None, keep: str) -> tuple[str, ...]:
    """Idle models to unload on `device` after a load ran out of memory there."""
    pool = next((p for p in pools_now(snapshot, keep) if p.name == device), None)
    if pool is None:
        return ()
    return after_oom(device, need, pool, residents(snapshot, excluding=keep), frozenset({keep}))


def idle_on(snapshot: Snapshot, device: str) -> list[str]:
    """Idle, unpinned models holding memory on `device` (a worker there died of running out of it)."""
    return [r.model_id for r in residents(snapshot) if not r.busy and not r.pinned and r.vector[device] > 0]


def expired(snapshot: Snapshot) -> list[str]:
    """Loaded, idle, unpinned models whose TTL has run out."""
    return [
        v.model_id
        for v in snapshot.models
        if v.idle_expires_in is not None and v.idle_expires_in <= 0 and v.state is State.LOADED
    ]
