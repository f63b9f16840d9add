"""Races the scheduler closes: each test fails on the registry it replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.engine.base import Delta
from gateway.errors import GatewayError
from gateway.memory.facts import inspect_models
from gateway.scheduler import State
from gateway.scheduler.cpu import CpuBudget
from gateway.testing.fakellama import FakeScript
from tests.fast.scheduler_helpers import build, enter
from tests.fast.test_worker_loop import params

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("yields", range(6))
async def test_eviction_racing_a_new_hold_of_the_victim(make_config: Any, tmp_path: Path, yields: int) -> None:
    """Loading b evicts idle a; a request for a arriving while the eviction is under way must not be
    handed a's worker as it is being stopped. Tried at every interleaving of the first few steps."""
    scheduler, _, _ = build(make_config, tmp_path, {"a": {}, "b": {}}, fits=1, gateway={"room_wait": 5})
    async with scheduler.hold("a", generate=False):
        pass
    loading_b = asyncio.create_task(enter(scheduler.hold("b", generate=False)))
    for _ in range(yields):
        await asyncio.sleep(0)
    hold_a = asyncio.create_task(enter(scheduler.hold("a", generate=False)))
    done, _ = await asyncio.wait({loading_b, hold_a}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    winner = done.pop().result()
    await asyncio.sleep(0.05)  # let any unload under way finish
    assert winner.engine.alive, f"{winner.model_id} was handed a worker that is being stopped"
    winner.release()
    other = await asyncio.wait_for(loading_b if winner.model_id == "a" else hold_a, 5)
    assert other.engine.alive
    other.release()
    await scheduler.close()


async def test_cpu_queue_survives_a_reload_that_shrinks_capacity() -> None:
    """A waiter sized for the old capacity must not wait forever once the capacity shrinks below it."""
    cpu = CpuBudget(capacity=4, max_wait=3600)
    await cpu.enter("a", 4)
    waiting = asyncio.create_task(cpu.enter("b", 4))
    await asyncio.sleep(0)
    assert not waiting.done()
    cpu.resize(2)
    cpu.leave("a")
    await asyncio.wait_for(waiting, 5)
    assert cpu.view().grants == {"b": 2}
    cpu.leave("b")
    assert cpu.in_use == 0


async def test_cpu_queue_wakes_when_a_reload_grows_capacity() -> None:
    cpu = CpuBudget(capacity=2, max_wait=3600)
    await cpu.enter("a", 2)
    waiting = asyncio.create_task(cpu.enter("b", 2))
    await asyncio.sleep(0)
    cpu.resize(4)
    await asyncio.wait_for(waiting, 5)  # without a release: the capacity alone made room
    assert cpu.view().grants == {"a": 2, "b": 2}


async def test_forced_unload_during_a_load(make_config: Any, tmp_path: Path) -> None:
    """The load stops, its waiters get a 503 (not a cancellation), the model is unloaded and not
    left 'loaded' without a worker, and the next request loads it again."""
    scheduler, factory, _ = build(make_config, tmp_path, {"a": {}}, scripts={"a": FakeScript(load_delay=0.2)})
    waiter = asyncio.create_task(enter(scheduler.hold("a")))
    while scheduler.view("a").state is not State.LOADING:
        await asyncio.sleep(0.005)
    view = await scheduler.unload("a", force=True)
    assert view.state is State.UNLOADED and view.holds == 0
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(waiter, 5)
    assert (info.value.status, info.value.code) == (503, "model_unloaded")
    assert factory.live() == []
    async with scheduler.hold("a") as held:
        assert held.engine.alive and scheduler.view("a").state is State.LOADED
    assert factory.loads == {"a": 2}
    await scheduler.close()


async def test_forced_unload_before_the_load_task_has_run(make_config: Any, tmp_path: Path) -> None:
    """A load task cancelled before its first step runs none of its own handlers: its waiters still
    get a 503 (not a bare cancellation), and the next request loads the model again."""
    scheduler, factory, _ = build(make_config, tmp_path, {"a": {}}, scripts={"a": FakeScript(load_delay=0.2)})
    waiter = asyncio.create_task(enter(scheduler.hold("a")))
    slot = scheduler._slots["a"]  # the load task is internal: reach in to time the unload exactly
    for _ in range(100):  # step until the load task exists, then unload before it ever runs
        await asyncio.sleep(0)
        if slot.load_task is not None or waiter.done():
            break
    await scheduler.unload("a", force=True)
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(waiter, 5)
    assert (info.value.status, info.value.code) == (503, "model_unloaded")
    async with scheduler.hold("a") as held:
        assert held.engine.alive and scheduler.view("a").state is State.LOADED
    assert factory.live() == ["a"]
    await scheduler.close()


async def test_reload_window_counts_the_retiring_memory(make_config: Any, tmp_path: Path) -> None:
    """Right after a reload replaces or removes a loaded model, before any other task has run, its
    memory still counts: no load may plan with it."""
    scheduler, _, _ = build(make_config, tmp_path, {"a": {}, "gone": {}})
    for name in ("a", "gone"):
        async with scheduler.hold(name, generate=False):
            pass
    used = scheduler.snapshot().memory_used
    after = parse_settings(make_config({"a": {"model": {"n_ctx": 32}}}), tmp_path)
    scheduler.apply(after, inspect_models(after), scheduler.budget)
    snapshot = scheduler.snapshot()  # same step as the reload: no await in between
    assert snapshot.memory_used >= used
    assert {v.model_id for v in snapshot.retiring} == {"a", "gone"}
    await scheduler.close()


async def test_turns_follow_runtime_parallel(make_config: Any, tmp_path: Path) -> None:
    """Up to `parallel` holds run at once; more wait in arrival order; the queue bound counts all."""
    scheduler, _, _ = build(make_config, tmp_path, {"a": {"runtime": {"parallel": 2}, "max_queue": 4}})
    first, second = await enter(scheduler.hold("a")), await enter(scheduler.hold("a"))
    third = asyncio.create_task(enter(scheduler.hold("a")))
    fourth = asyncio.create_task(enter(scheduler.hold("a")))
    await asyncio.sleep(0.01)
    view = scheduler.view("a")
    assert (view.running, view.waiting) == (2, 2)
    with pytest.raises(GatewayError) as info:
        await enter(scheduler.hold("a"))
    assert info.value.status == 429
    fourth.cancel()  # a waiting request that goes away leaves no trace
    await asyncio.sleep(0)
    assert (scheduler.view("a").running, scheduler.view("a").waiting) == (2, 1)
    first.release()
    third_hold = await asyncio.wait_for(third, 5)
    first.release()  # a second release is a no-op
    assert (scheduler.view("a").running, scheduler.view("a").waiting) == (2, 0)
    second.release()
    third_hold.release()
    assert scheduler.view("a").holds == 0 and scheduler.cpu.in_use == 0
    await scheduler.close()


async def test_a_request_waiting_its_turn_gets_a_live_worker_after_a_crash(make_config: Any, tmp_path: Path) -> None:
    scheduler, factory, _ = build(make_config, tmp_path, {"a": {}})
    running = await enter(scheduler.hold("a"))
    waiting = asyncio.create_task(enter(scheduler.hold("a")))
    await asyncio.sleep(0.01)
    await factory.crash(running.engine)
    running.release()
    held = await asyncio.wait_for(waiting, 5)
    assert held.engine.alive and held.engine is not running.engine
    assert factory.loads == {"a": 2}
    held.release()
    await scheduler.close()


def gated_stop(engine: Any) -> asyncio.Event:
    """Make stopping `engine` wait until the returned event is set. Like the real stop, the wait is
    shielded: a caller cancelled meanwhile does not stop the worker from exiting."""
    gate = asyncio.Event()
    real = engine.stop

    async def gated(reason: str | None) -> None:
        await gate.wait()
        await real(reason)

    task: list[asyncio.Future[None]] = []

    async def stop(reason: str | None = None) -> None:
        if not task:
            task.append(asyncio.ensure_future(gated(reason)))
        await asyncio.shield(task[0])

    engine.stop = stop
    return gate


async def test_a_second_unload_waits_for_the_worker_the_first_is_stopping(make_config: Any, tmp_path: Path) -> None:
    """An operator's unload arriving while an eviction stops the worker must not mark the model
    unloaded early: its memory counts until the worker has exited, so nothing else may load into it."""
    scheduler, workers, _ = build(make_config, tmp_path, {"a": {}, "b": {}}, fits=1, gateway={"room_wait": 5})
    async with scheduler.hold("a", generate=False) as held:
        gate = gated_stop(held.engine)
    first = asyncio.create_task(scheduler.unload("a", force=True))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(scheduler.unload("a"))
    load_b = asyncio.create_task(enter(scheduler.hold("b", generate=False)))
    await asyncio.sleep(0.05)
    assert scheduler.view("a").state is State.UNLOADING and not second.done()
    assert not load_b.done() and workers.live() == ["a"], "b loaded into memory a's worker still holds"
    gate.set()
    (await asyncio.wait_for(load_b, 5)).release()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert scheduler.view("a").state is State.UNLOADED and workers.live() == ["b"]
    await scheduler.close()


async def test_a_cancelled_load_leaves_its_victims_counted_until_they_exit(make_config: Any, tmp_path: Path) -> None:
    """Loading b evicts a; b is force-unloaded while a's worker is still exiting. a's memory must
    count until then (a third load must wait), and a's worker must still be stopped."""
    scheduler, workers, _ = build(make_config, tmp_path, {"a": {}, "b": {}, "c": {}}, fits=1, gateway={"room_wait": 5})
    async with scheduler.hold("a", generate=False) as held:
        gate = gated_stop(held.engine)
    load_b = asyncio.create_task(enter(scheduler.hold("b", generate=False)))
    await asyncio.sleep(0.05)
    assert scheduler.view("a").state is State.UNLOADING
    await scheduler.unload("b", force=True)
    with pytest.raises(GatewayError, match="unloaded"):
        await load_b
    load_c = asyncio.create_task(enter(scheduler.hold("c", generate=False)))
    await asyncio.sleep(0.05)
    assert scheduler.view("a").state is State.UNLOADING, "a's memory stopped counting before its worker exited"
    assert not load_c.done()
    gate.set()
    (await asyncio.wait_for(load_c, 5)).release()
    assert workers.live() == ["c"]
    await scheduler.close()


async def test_requests_a_forced_unload_ends_say_so(make_config: Any, tmp_path: Path) -> None:
    """A running request ended by an operator's forced unload is told the model was unloaded and
    why, not that its worker crashed; a real crash still says crash."""
    scripts = {"a": FakeScript(reply_tokens=500, step_delay=0.01), "b": FakeScript(crash_after_steps=3)}
    scheduler, _, _ = build(make_config, tmp_path, {"a": {}, "b": {}}, scripts=scripts)
    unloads: list[asyncio.Task[Any]] = []
    engines: list[Any] = []

    async def run(name: str, unload: bool) -> GatewayError:
        async with scheduler.hold(name) as held:
            engines.append(held.engine)
            generation = held.engine.generate(params("hello", max_tokens=400))
            with pytest.raises(GatewayError) as failed:
                async for event in generation:
                    if unload and isinstance(event, Delta):
                        unload = False
                        unloads.append(asyncio.create_task(scheduler.unload(name, force=True)))
        return failed.value

    unloaded = await asyncio.wait_for(run("a", unload=True), 10)
    assert (unloaded.status, unloaded.code) == (503, "model_unloaded")
    assert unloaded.message == "Model 'a' was unloaded (admin) while this request was running; retry the request."
    await asyncio.gather(*unloads)
    # A request admitted just before the unload reaches the worker after it: told the same.
    with pytest.raises(GatewayError, match=r"unloaded \(admin\)"):
        async for _ in engines[0].generate(params("late")):
            pass
    with pytest.raises(GatewayError, match=r"unloaded \(admin\)"):
        await engines[0].tokenize("late")
    crashed = await asyncio.wait_for(run("b", unload=False), 10)
    assert crashed.code == "model_worker_crashed"
    await scheduler.close()
