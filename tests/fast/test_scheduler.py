"""Scheduler behaviour over fake workers: single-flight loads, LRU under budget, holds, pinned, TTL, crashes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.scheduler import Hold, Scheduler, State
from gateway.testing.fakellama import FakeScript
from tests.fast.scheduler_helpers import Clock, build, enter

pytestmark = pytest.mark.anyio


def loaded(registry: Scheduler) -> set[str]:
    return {v.model_id for v in registry.views() if v.state is State.LOADED}


async def acquire(registry: Scheduler, name: str) -> Hold:
    """A hold entered by hand (released by the test): one that takes no turn, so several can be held."""
    return await enter(registry.hold(name, generate=False))


async def use(registry: Scheduler, name: str, clock: Clock | None = None) -> None:
    if clock:
        clock.now += 1
    (await acquire(registry, name)).release()


async def test_single_flight_load(make_config: Any, tmp_path: Path) -> None:
    registry, factory, _ = build(make_config, tmp_path, {"a": {}}, scripts={"a": FakeScript(load_delay=0.05)})
    leases = await asyncio.gather(*(acquire(registry, "a") for _ in range(10)))
    assert factory.loads == {"a": 1}
    assert len({id(lease.engine) for lease in leases}) == 1
    for lease in leases:
        lease.release()
    await registry.close()


async def test_busy_while_a_model_loads_or_generates(make_config: Any, tmp_path: Path) -> None:
    """What a spare worker's start waits out (SparePool.busy)."""
    registry, _, _ = build(make_config, tmp_path, {"a": {}}, scripts={"a": FakeScript(load_delay=0.2)})
    assert not registry.busy()
    entering = asyncio.ensure_future(enter(registry.hold("a")))
    for _ in range(100):
        if registry.view("a").state is State.LOADING:
            break
        await asyncio.sleep(0.005)
    assert registry.busy()  # loading
    hold = await entering
    assert registry.view("a").running == 1 and registry.busy()  # generating
    hold.release()
    assert not registry.busy()
    await registry.close()


async def test_unknown_model_is_404(make_config: Any, tmp_path: Path) -> None:
    registry, _, _ = build(make_config, tmp_path, {"a": {"aliases": ["alias"]}})
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "nope")
    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")
    await use(registry, "alias")
    assert loaded(registry) == {"a"}
    await registry.close()


async def test_lru_eviction_under_budget(make_config: Any, tmp_path: Path) -> None:
    registry, factory, clock = build(make_config, tmp_path, {"a": {}, "b": {}, "c": {}}, fits=2)
    for name in ("a", "b", "c"):
        await use(registry, name, clock)
    assert loaded(registry) == {"b", "c"}
    await use(registry, "b", clock)  # b is now more recent than c
    await use(registry, "a", clock)
    assert loaded(registry) == {"a", "b"}
    assert factory.live() == ["b", "a"]  # live engines in the order they were made: b's, then a's second
    assert factory.loads == {"a": 2, "b": 1, "c": 1}  # c, the least recently used, went; b stayed
    assert registry.snapshot().memory_used <= registry.budget
    await registry.close()


async def test_model_in_use_is_never_evicted(make_config: Any, tmp_path: Path) -> None:
    registry, _, _ = build(make_config, tmp_path, {"a": {}, "b": {}}, fits=1, gateway={"room_wait": 0.1})
    lease = await acquire(registry, "a")
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "b")
    assert info.value.status == 503
    assert info.value.code == "model_capacity_unavailable"
    assert info.value.headers()["Retry-After"]
    assert loaded(registry) == {"a"}
    lease.release()
    await use(registry, "b")
    assert loaded(registry) == {"b"}
    await registry.close()


async def test_waiting_load_proceeds_when_busy_model_goes_idle(make_config: Any, tmp_path: Path) -> None:
    registry, _, _ = build(make_config, tmp_path, {"a": {}, "b": {}}, fits=1, gateway={"room_wait": 30})
    lease = await acquire(registry, "a")
    waiter = asyncio.create_task(acquire(registry, "b"))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    lease.release()
    (await asyncio.wait_for(waiter, 5)).release()
    assert loaded(registry) == {"b"}
    await registry.close()


async def test_model_that_can_never_fit(make_config: Any, tmp_path: Path) -> None:
    registry, _, _ = build(make_config, tmp_path, {"a": {}}, fits=0)
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "a")
    assert (info.value.status, info.value.code) == (503, "model_exceeds_memory_budget")
    assert "memory budget" in info.value.message and info.value.retry_after is None
    await registry.close()


async def test_max_loaded(make_config: Any, tmp_path: Path) -> None:
    registry, _, clock = build(make_config, tmp_path, {"a": {}, "b": {}}, gateway={"max_loaded": 1})
    await use(registry, "a", clock)
    await use(registry, "b", clock)
    assert loaded(registry) == {"b"}
    await registry.close()


async def test_queue_full_is_429(make_config: Any, tmp_path: Path) -> None:
    registry, _, _ = build(make_config, tmp_path, {"a": {"max_queue": 2}})
    held = [await acquire(registry, "a"), await acquire(registry, "a")]
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "a")
    assert (info.value.status, info.value.code) == (429, "queue_full")
    assert info.value.headers() == {"Retry-After": "1"}
    held[0].release()
    (await acquire(registry, "a")).release()
    held[1].release()
    await registry.close()


async def test_pinned_loads_at_start_and_stays(make_config: Any, tmp_path: Path) -> None:
    registry, _, clock = build(make_config, tmp_path, {"p": {"pinned": True}, "a": {}, "b": {}}, fits=2)
    await registry.start()
    for _ in range(100):
        if loaded(registry) == {"p"}:
            break
        await asyncio.sleep(0.01)
    assert loaded(registry) == {"p"}
    await use(registry, "a", clock)
    await use(registry, "b", clock)
    assert loaded(registry) == {"p", "b"}
    await registry.close()


async def test_ttl_unloads_idle_models(make_config: Any, tmp_path: Path) -> None:
    registry, _, clock = build(make_config, tmp_path, {"a": {"ttl": "10s"}, "b": {}, "p": {"ttl": 1, "pinned": True}})
    await use(registry, "a")
    await use(registry, "b")
    await use(registry, "p")
    lease = await acquire(registry, "a")
    clock.now += 11
    assert await registry.reap() == []  # a has a request in flight
    lease.release()
    assert await registry.reap() == []  # released just now: idle time starts over
    clock.now += 11
    assert await registry.reap() == ["a"]
    assert loaded(registry) == {"b", "p"}  # no ttl / pinned
    await registry.close()


async def test_crashed_worker_is_replaced_on_next_request(make_config: Any, tmp_path: Path) -> None:
    registry, factory, _ = build(make_config, tmp_path, {"a": {}})
    lease = await acquire(registry, "a")
    engine = lease.engine
    lease.release()
    await factory.crash(engine)
    assert loaded(registry) == set()
    lease = await acquire(registry, "a")
    assert lease.engine is not engine and lease.engine.alive
    assert factory.loads == {"a": 2}
    lease.release()
    await registry.close()


async def test_failed_load_cools_down(make_config: Any, tmp_path: Path) -> None:
    registry, factory, clock = build(
        make_config,
        tmp_path,
        {"a": {}},
        gateway={"failure_cooldown": 5},
        scripts={"a": FakeScript(fail_load="bad tensor")},
    )
    for _ in range(2):
        with pytest.raises(GatewayError) as info:
            await acquire(registry, "a")
        assert (info.value.status, info.value.code) == (503, "model_load_failed")
        assert "bad tensor" in info.value.message
    assert factory.loads == {"a": 1}  # the second request did not retry during the cooldown
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 5
    assert registry.view("a").state is State.FAILED
    clock.now += 6
    with pytest.raises(GatewayError):
        await acquire(registry, "a")
    assert factory.loads == {"a": 2}
    await registry.close()


async def test_load_is_not_tied_to_the_first_client(make_config: Any, tmp_path: Path) -> None:
    registry, factory, _ = build(make_config, tmp_path, {"a": {}}, scripts={"a": FakeScript(load_delay=0.05)})
    first = asyncio.create_task(acquire(registry, "a"))
    await asyncio.sleep(0.01)
    first.cancel()
    lease = await acquire(registry, "a")
    assert factory.loads == {"a": 1}
    assert registry.view("a").holds == 1  # the cancelled request gave its lease back
    lease.release()
    await registry.close()


async def test_loaded_model_does_not_wait_for_another_load(make_config: Any, tmp_path: Path) -> None:
    registry, _, _ = build(make_config, tmp_path, {"a": {}, "slow": {}}, scripts={"slow": FakeScript(load_delay=30)})
    await use(registry, "a")
    slow = asyncio.create_task(acquire(registry, "slow"))
    await asyncio.sleep(0.01)
    assert registry.view("slow").state is State.LOADING
    (await asyncio.wait_for(acquire(registry, "a"), 5)).release()
    assert registry.view("slow").state is State.LOADING
    slow.cancel()
    await registry.close()


async def test_close_stops_every_engine(make_config: Any, tmp_path: Path) -> None:
    registry, factory, _ = build(make_config, tmp_path, {"a": {}, "b": {}})
    await use(registry, "a")
    await use(registry, "b")
    await registry.close()
    assert factory.live() == []
    with pytest.raises(GatewayError) as info:
        await acquire(registry, "a")
    assert info.value.code == "shutting_down"
