"""Room by vectors on a CPU-only machine (one pool, the host's): the same choices as the byte
budget always made — least recently used idle models first, busy and pinned ones never, and no
eviction when the model would have to wait anyway."""

from gateway.memory.planner import LoadPlan, NoRoom, Option, Placement, Resident, plan_load
from gateway.memory.pools import HOST, PoolState, Vector

MB = 2**20


def r(name: str, size: int, last_used: float, busy: bool = False, pinned: bool = False) -> Resident:
    return Resident(name, Vector.of({HOST: size * MB}), busy, pinned, last_used)


def plan_room(need: int, residents: list[Resident], budget: int, max_loaded: int | None) -> str | tuple[str, ...]:
    plan = plan_load([Option(Placement(), Vector.of({HOST: need}))], [PoolState(HOST, budget)], residents, max_loaded)
    if isinstance(plan, NoRoom):
        return "never" if plan.never else "wait"
    assert isinstance(plan, LoadPlan)
    return plan.evict


def test_fits_without_eviction() -> None:
    assert plan_room(100 * MB, [r("a", 100, 1)], 300 * MB, None) == ()


def test_evicts_least_recently_used_idle_first() -> None:
    residents = [r("new", 100, 3), r("old", 100, 1), r("mid", 100, 2)]
    assert plan_room(100 * MB, residents, 300 * MB, None) == ("old",)
    assert plan_room(200 * MB, residents, 300 * MB, None) == ("old", "mid")


def test_busy_models_are_never_evicted() -> None:
    residents = [r("busy-old", 100, 1, busy=True), r("idle-new", 100, 5)]
    assert plan_room(200 * MB, residents, 300 * MB, None) == ("idle-new",)
    assert plan_room(250 * MB, residents, 300 * MB, None) == "wait"


def test_pinned_models_are_never_evicted() -> None:
    residents = [r("pinned", 200, 0, pinned=True), r("idle", 50, 1)]
    assert plan_room(100 * MB, residents, 300 * MB, None) == ("idle",)
    assert plan_room(150 * MB, residents, 300 * MB, None) == "never"


def test_never_fits_when_larger_than_budget() -> None:
    assert plan_room(500 * MB, [], 300 * MB, None) == "never"


def test_max_loaded_counts_models() -> None:
    residents = [r("a", 10, 2), r("b", 10, 1)]
    assert plan_room(10 * MB, residents, 10_000 * MB, 2) == ("b",)
    assert plan_room(10 * MB, [r("a", 10, 2, busy=True), r("b", 10, 1, busy=True)], 10_000 * MB, 2) == "wait"
    assert plan_room(10 * MB, [r("p", 10, 1, pinned=True)], 10_000 * MB, 1) == "never"


def test_does_not_evict_when_waiting_anyway() -> None:
    # Evicting the idle model would not make room while the busy one runs: keep it loaded.
    residents = [r("busy", 200, 1, busy=True), r("idle", 50, 2)]
    assert plan_room(200 * MB, residents, 300 * MB, None) == "wait"
