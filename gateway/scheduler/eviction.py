"""Which models to unload: pure functions of a snapshot, easy to test on their own.

`plan_room` picks the least recently used idle models to unload so one more fits; `expired` picks
the idle models whose TTL has run out. Neither looks at anything but its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.scheduler.views import Snapshot, State


@dataclass(frozen=True)
class Resident:
    """A model holding memory, as the eviction policy sees it."""

    model_id: str
    bytes: int
    busy: bool  # holds, a load under way, draining or retiring: never chosen
    pinned: bool
    last_used: float


@dataclass(frozen=True)
class Plan:
    evict: tuple[str, ...] = ()
    wait: bool = False  # fits only once busy models go idle
    never: bool = False  # cannot fit even with every unpinned model unloaded


def plan_room(need: int, residents: Sequence[Resident], budget: int, max_loaded: int | None) -> Plan:
    """Least recently used idle models to unload so that `need` more bytes (one more model) fit."""

    def fits(used: int, count: int) -> bool:
        return used + need <= budget and (max_loaded is None or count + 1 <= max_loaded)

    pinned = [r for r in residents if r.pinned]
    if not fits(sum(r.bytes for r in pinned), len(pinned)):
        return Plan(never=True)
    used = sum(r.bytes for r in residents)
    count = len(residents)
    evict: list[str] = []
    for resident in sorted((r for r in residents if not r.busy and not r.pinned), key=lambda r: r.last_used):
        if fits(used, count):
            break
        evict.append(resident.model_id)
        used -= resident.bytes
        count -= 1
    if fits(used, count):
        return Plan(evict=tuple(evict))
    return Plan(wait=True)


def residents(snapshot: Snapshot, excluding: str | None = None) -> list[Resident]:
    """Every version holding memory; only a loaded current version that nobody holds may be chosen.

    A retiring version counts as busy (it is on its way out anyway), and so does one already
    being unloaded: its memory is not free until its worker has exited.
    """
    found = []
    for view in snapshot.models:
        if view.state.resident and view.model_id != excluding:
            idle = view.state is State.LOADED and view.holds == 0 and not view.draining
            found.append(Resident(view.model_id, view.memory_bytes, not idle, view.entry.pinned, view.last_used))
    for view in snapshot.retiring:
        if view.state.resident:
            found.append(Resident(view.model_id, view.memory_bytes, True, view.entry.pinned, view.last_used))
    return found


def fits_now(need: int, snapshot: Snapshot, model_id: str) -> Plan:
    """The eviction plan for loading `model_id` (needing `need` bytes) into this snapshot."""
    return plan_room(need, residents(snapshot, excluding=model_id), snapshot.budget, snapshot.max_loaded)


def expired(snapshot: Snapshot) -> list[str]:
    """Loaded, idle, unpinned models whose TTL has run out."""
    return [
        v.model_id
        for v in snapshot.models
        if v.idle_expires_in is not None and v.idle_expires_in <= 0 and v.state is State.LOADED
    ]
