"""The placement planner over memory vectors: pack, spread, pinned, foreign usage, measured over
budget → rebalance, OOM → evict → retry."""

from __future__ import annotations

from collections.abc import Callable

from gateway.memory.planner import (
    LoadPlan,
    ModelPlacementConfig,
    NoRoom,
    Option,
    Placement,
    Resident,
    after_oom,
    evictions_for,
    held_by,
    placement_options,
    plan_load,
    rebalance,
)
from gateway.memory.pools import HOST, PoolState, Vector
from gateway.scheduler.devices import llama_arguments, worker_environment

GiB = 2**30


def gpu(name: str, budget: float, total: float = 80, free: float | None = None, reserve: float = 1) -> PoolState:
    """A GPU pool; `free` is what the device reports (default: total minus nothing)."""
    return PoolState(
        name,
        int(budget * GiB),
        int(total * GiB),
        int((total if free is None else free) * GiB),
        int(reserve * GiB),
        uuid=f"GPU-{name}",
    )


HOST_POOL = PoolState(HOST, 64 * GiB)


def vec(**pools: float) -> Vector:
    return Vector.of({name: int(size * GiB) for name, size in pools.items()})


def need_fn(weights_gib: float, host_gib: float = 1.0) -> Callable[[Placement], Vector]:
    """A footprint stand-in: the GPU part split by shares, the host part fixed."""

    def need_of(placement: Placement) -> Vector:
        if not placement.on_gpu:
            return vec(host=weights_gib + host_gib)
        shares = placement.split or (1.0,)
        total = sum(shares)
        parts = {d: weights_gib * s / total for d, s in zip(placement.devices, shares, strict=True)}
        return Vector.of({HOST: int(host_gib * GiB), **{d: int(n * GiB) for d, n in parts.items() if n}})

    return need_of


def options(
    config: ModelPlacementConfig, pools: list[PoolState], residents: list[Resident], gib: float
) -> list[Option]:
    return placement_options(config, pools, held_by(residents), need_fn(gib))


def resident(model_id: str, last_used: float, busy: bool = False, pinned: bool = False, **pools: float) -> Resident:
    return Resident(model_id, vec(**pools), busy=busy, pinned=pinned, last_used=last_used)


ALL = ModelPlacementConfig(n_gpu_layers=-1)


def test_vector_arithmetic() -> None:
    a, b = vec(host=1, cuda0=2), vec(cuda0=1, cuda1=3)
    assert (a + b).as_dict() == {HOST: GiB, "cuda0": 3 * GiB, "cuda1": 3 * GiB}
    assert (a - vec(cuda0=2)).as_dict() == {HOST: GiB}
    assert (a + b).pools == ("cuda0", "cuda1", HOST)
    assert Vector.of({"cuda0": 0}) == Vector()


def test_cpu_only_model_goes_to_host() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40)]
    (only,) = options(ModelPlacementConfig(n_gpu_layers=0), pools, [], 4)
    assert only.placement == Placement()
    assert only.need.as_dict() == {HOST: 5 * GiB}


def test_no_gpus_means_host_even_when_offload_is_asked() -> None:
    (only,) = options(ALL, [HOST_POOL], [], 4)
    assert not only.placement.on_gpu


def test_pack_prefers_the_gpu_with_most_room() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40)]
    residents = [resident("a", 1, cuda0=30)]
    opts = options(ALL, pools, residents, 8)
    assert [o.placement.devices for o in opts] == [("cuda1",), ("cuda0",), ("cuda0", "cuda1")]
    plan = plan_load(opts, pools, residents)
    assert isinstance(plan, LoadPlan)
    assert plan.option.placement.devices == ("cuda1",)
    assert plan.evict == ()


def test_main_gpu_comes_first() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40)]
    opts = options(ModelPlacementConfig(n_gpu_layers=-1, main_gpu=1), pools, [resident("a", 1, cuda1=10)], 8)
    assert opts[0].placement.devices == ("cuda1",)


def test_spreads_when_no_single_gpu_has_room() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40)]
    residents = [resident("busy0", 1, busy=True, cuda0=25), resident("busy1", 2, busy=True, cuda1=15)]
    plan = plan_load(options(ALL, pools, residents, 30), pools, residents)
    assert isinstance(plan, LoadPlan)
    placement = plan.option.placement
    assert placement.devices == ("cuda0", "cuda1")
    assert placement.split is not None
    # shares follow room: cuda0 has 15 GiB, cuda1 25 GiB
    assert abs(placement.split[0] - 15 / 40) < 1e-9
    assert plan.evict == ()


def test_spread_policy_always_spreads() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40)]
    (only,) = options(ModelPlacementConfig(n_gpu_layers=-1, policy="spread"), pools, [], 2)
    assert only.placement.devices == ("cuda0", "cuda1")
    assert only.placement.split == (0.5, 0.5)


def test_configured_tensor_split_and_devices() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40), gpu("cuda2", 40)]
    config = ModelPlacementConfig(n_gpu_layers=-1, devices=("cuda2", "GPU-cuda0"), tensor_split=(3, 1))
    (only,) = options(config, pools, [], 8)
    assert only.placement.devices == ("cuda2", "cuda0")
    assert only.need.as_dict() == {HOST: GiB, "cuda2": 6 * GiB, "cuda0": 2 * GiB}


def test_devices_restrict_the_choice() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40)]
    opts = options(ModelPlacementConfig(n_gpu_layers=-1, devices=("cuda1",)), pools, [], 8)
    assert [o.placement.devices for o in opts] == [("cuda1",)]


def test_evicts_only_models_in_the_short_pool() -> None:
    pools = [HOST_POOL, gpu("cuda0", 20)]
    residents = [
        resident("cpu-old", 0, host=10),  # least recently used, but holds nothing on cuda0
        resident("gpu-old", 1, host=1, cuda0=8),
        resident("gpu-new", 2, host=1, cuda0=8),
    ]
    plan = plan_load(options(ALL, pools, residents, 8), pools, residents)
    assert plan == LoadPlan(plan.option, ("gpu-old",)) if isinstance(plan, LoadPlan) else False


def test_pinned_and_busy_are_never_evicted() -> None:
    pools = [HOST_POOL, gpu("cuda0", 20)]
    residents = [
        resident("pinned", 0, pinned=True, cuda0=8),
        resident("busy", 1, busy=True, cuda0=8),
        resident("idle", 2, cuda0=2),
    ]
    plan = plan_load(options(ALL, pools, residents, 3.5), pools, residents)
    assert isinstance(plan, LoadPlan)
    assert plan.evict == ("idle",)
    no = plan_load(options(ALL, pools, residents, 9), pools, residents)
    assert isinstance(no, NoRoom)
    assert not no.never  # the busy model will finish
    assert no.shortfall is not None and no.shortfall.pool == "cuda0"


def test_never_fits_with_pinned_models() -> None:
    pools = [HOST_POOL, gpu("cuda0", 20)]
    residents = [resident("pinned", 0, pinned=True, cuda0=15)]
    no = plan_load(options(ALL, pools, residents, 8), pools, residents)
    assert isinstance(no, NoRoom)
    assert no.never
    assert "cuda0 needs 8192 MiB, 5120 MiB available" in no.describe()


def test_foreign_usage_is_respected() -> None:
    # Budget says 40 GiB, but another process holds 70 of the 80: only 9 GiB above the reserve.
    pools = [HOST_POOL, gpu("cuda0", 40, total=80, free=10)]
    plan = plan_load(options(ALL, pools, [], 8), pools, [])
    assert isinstance(plan, LoadPlan)
    no = plan_load(options(ALL, pools, [], 12), pools, [])
    assert isinstance(no, NoRoom)
    assert not no.never  # the other process may exit
    assert no.shortfall is not None
    assert no.shortfall.available == 9 * GiB
    assert no.shortfall.free == 10 * GiB


def test_eviction_counts_freed_memory_as_coming_back() -> None:
    # Our idle model holds 6 GiB of the used memory; evicting it makes room on the device too.
    pools = [HOST_POOL, gpu("cuda0", 40, total=24, free=3)]
    residents = [resident("ours", 1, cuda0=6)]
    plan = plan_load(options(ALL, pools, residents, 7), pools, residents)
    assert isinstance(plan, LoadPlan)
    assert plan.evict == ("ours",)


def test_fewest_evictions_wins_over_preference() -> None:
    pools = [HOST_POOL, gpu("cuda0", 20), gpu("cuda1", 20)]
    residents = [
        resident("a", 1, cuda0=8),
        resident("b", 2, cuda0=8),
        resident("c", 3, cuda1=12),
        resident("d", 4, busy=True, cuda0=1),
    ]
    # Room: cuda0 3, cuda1 8 (not even 15 together). cuda0 alone needs 2 evictions, cuda1 alone 1.
    plan = plan_load(options(ALL, pools, residents, 15), pools, residents)
    assert isinstance(plan, LoadPlan)
    assert plan.option.placement.devices == ("cuda1",)
    assert plan.evict == ("c",)


def test_max_loaded_still_applies() -> None:
    residents = [resident("a", 1, host=1), resident("b", 2, host=1)]
    plan = plan_load(options(ModelPlacementConfig(), [HOST_POOL], residents, 1), [HOST_POOL], residents, max_loaded=2)
    assert isinstance(plan, LoadPlan)
    assert plan.evict == ("a",)
    busy = [resident("a", 1, busy=True, host=1), resident("b", 2, busy=True, host=1)]
    wait = plan_load(options(ModelPlacementConfig(), [HOST_POOL], busy, 1), [HOST_POOL], busy, max_loaded=2)
    assert wait == NoRoom(False, None, 2)
    assert wait.describe() == "max_loaded (2) models are loaded and none can be unloaded"
    pinned = [resident("a", 1, pinned=True, host=1)]
    never = plan_load(options(ModelPlacementConfig(), [HOST_POOL], pinned, 1), [HOST_POOL], pinned, max_loaded=1)
    assert isinstance(never, NoRoom) and never.never


def test_host_pool_behaves_as_the_single_budget_did() -> None:
    host = PoolState(HOST, 10 * GiB)
    residents = [resident("a", 1, host=4), resident("b", 2, host=4)]
    plan = plan_load([Option(Placement(), vec(host=5))], [host], residents)
    assert plan == LoadPlan(Option(Placement(), vec(host=5)), ("a",))
    assert evictions_for(vec(host=11), [host], residents) is None


def test_estimate_too_low_then_measured_over_budget_rebalances() -> None:
    pools = [HOST_POOL, gpu("cuda0", 20)]
    estimated = [resident("old", 1, cuda0=6), resident("new", 5, busy=True, cuda0=12)]
    assert rebalance(pools, estimated) == ()
    # Measured after load: the new model holds 16 GiB, not 12; the pool is 2 GiB over its budget.
    measured = [estimated[0], resident("new", 5, busy=True, cuda0=16)]
    assert rebalance(pools, measured) == ("old",)


def test_rebalance_when_the_device_runs_below_its_reserve() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40, total=24, free=0.5)]
    residents = [resident("a", 1, cuda0=2), resident("b", 2, cuda0=2), resident("cpu", 0, host=3)]
    assert rebalance(pools, residents) == ("a",)


def test_oom_evicts_on_that_device() -> None:
    pool = gpu("cuda0", 40, total=24, free=2)
    residents = [
        resident("other-device", 0, cuda1=8),
        resident("a", 1, cuda0=3),
        resident("b", 2, cuda0=3),
        resident("busy", 3, busy=True, cuda0=3),
    ]
    evicted = after_oom("cuda0", 5 * GiB, pool, residents, keep=frozenset({"target"}))
    assert evicted == ("a", "b")  # 2 free + 3 - 1 reserve < 5; + 3 more >= 5
    assert after_oom("cuda0", 4 * GiB, pool, residents, frozenset()) == ("a",)
    assert after_oom("cuda0", None, pool, residents, frozenset()) == ("a", "b")


def test_worker_sees_only_its_devices() -> None:
    pools = [HOST_POOL, gpu("cuda0", 40), gpu("cuda1", 40)]
    spread = Placement(("cuda1", "cuda0"), (0.25, 0.75), -1)
    assert worker_environment(spread, pools) == {"CUDA_VISIBLE_DEVICES": "GPU-cuda1,GPU-cuda0"}
    assert worker_environment(Placement(), pools) == {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
    assert llama_arguments(spread) == {"n_gpu_layers": -1, "main_gpu": 0, "tensor_split": [0.25, 0.75]}
    assert llama_arguments(Placement(("cuda1",), None, 20)) == {"n_gpu_layers": 20, "main_gpu": 0}
    assert llama_arguments(Placement()) == {"n_gpu_layers": 0}


def test_oom_scenario_from_the_log_to_the_503() -> None:
    """A load fails with llama.cpp's OOM lines; idle models on that device are unloaded, the freed
    memory is awaited, the load is retried once, and a second OOM becomes a 503 naming device, need
    and free memory."""
    import asyncio
    from pathlib import Path

    from gateway.engine.loadlog import parse_lines
    from gateway.errors import device_out_of_memory
    from gateway.memory.inventory import wait_until_free

    log = (Path(__file__).resolve().parents[1] / "fixtures" / "loadlog" / "cuda-oom.log").read_text()
    report = parse_lines(log.splitlines())
    assert report.oom is not None and report.oom.device == "cuda0"
    pool = gpu("cuda0", 80, total=80, free=2)
    residents = [resident("old", 1, cuda0=30), resident("newer", 2, cuda0=30), resident("busy", 3, busy=True, cuda0=10)]
    evicted = after_oom(report.oom.device, report.oom.need, pool, residents, keep=frozenset({"target"}))
    assert evicted == ("old", "newer")  # 39.5 GiB wanted: 2 free + 30 is not enough, + 30 is
    readings = iter([2, 20, 62])  # GiB free as the driver catches up after the workers exit
    wanted = {"cuda0": int((2 + 60) * GiB * 0.9)}
    assert asyncio.run(wait_until_free(lambda: {"cuda0": next(readings) * GiB}, wanted, timeout=60, interval=0))
    # The retry fails too (someone else took the memory): a 503 that explains.
    error = device_out_of_memory("target", "cuda0", report.oom.need, 3 * GiB, retry_after=5)
    assert error.status == 503
    assert error.code == "device_out_of_memory"
    assert (
        error.message
        == "Cannot load model 'target': cuda0 is out of memory (needed 39520 MiB, 3072 MiB free). Retry shortly."
    )
    assert error.headers() == {"Retry-After": "5"}
