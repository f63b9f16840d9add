from gateway.scheduler.eviction import Plan, Resident, plan_room

MB = 2**20


def r(name: str, size: int, last_used: float, busy: bool = False, pinned: bool = False) -> Resident:
    return Resident(name, size * MB, busy, pinned, last_used)


def test_fits_without_eviction() -> None:
    assert plan_room(100 * MB, [r("a", 100, 1)], 300 * MB, None) == Plan()


def test_evicts_least_recently_used_idle_first() -> None:
    residents = [r("new", 100, 3), r("old", 100, 1), r("mid", 100, 2)]
    assert plan_room(100 * MB, residents, 300 * MB, None) == Plan(evict=("old",))
    assert plan_room(200 * MB, residents, 300 * MB, None) == Plan(evict=("old", "mid"))


def test_busy_models_are_never_evicted() -> None:
    residents = [r("busy-old", 100, 1, busy=True), r("idle-new", 100, 5)]
    assert plan_room(200 * MB, residents, 300 * MB, None) == Plan(evict=("idle-new",))
    assert plan_room(250 * MB, residents, 300 * MB, None) == Plan(wait=True)


def test_pinned_models_are_never_evicted() -> None:
    residents = [r("pinned", 200, 0, pinned=True), r("idle", 50, 1)]
    assert plan_room(100 * MB, residents, 300 * MB, None) == Plan(evict=("idle",))
    assert plan_room(150 * MB, residents, 300 * MB, None) == Plan(never=True)


def test_never_fits_when_larger_than_budget() -> None:
    assert plan_room(500 * MB, [], 300 * MB, None) == Plan(never=True)


def test_max_loaded_counts_models() -> None:
    residents = [r("a", 10, 2), r("b", 10, 1)]
    assert plan_room(10 * MB, residents, 10_000 * MB, 2) == Plan(evict=("b",))
    assert plan_room(10 * MB, [r("a", 10, 2, busy=True), r("b", 10, 1, busy=True)], 10_000 * MB, 2) == Plan(wait=True)
    assert plan_room(10 * MB, [r("p", 10, 1, pinned=True)], 10_000 * MB, 1) == Plan(never=True)


def test_does_not_evict_when_waiting_anyway() -> None:
    # Evicting the idle model would not make room while the busy one runs: keep it loaded.
    residents = [r("busy", 200, 1, busy=True), r("idle", 50, 2)]
    assert plan_room(200 * MB, residents, 300 * MB, None) == Plan(wait=True)
