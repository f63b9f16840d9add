"""Which idle models to unload so that one more fits: a pure function, easy to test on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A model holding memory, as the eviction policy sees it."""

    model_id: str
    bytes: int
    busy: bool  # requests in flight or queued, or still loading: never evicted
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
