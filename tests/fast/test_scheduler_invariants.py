"""The package docstring's invariants, checked on snapshots throughout a random mixed workload."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.errors import GatewayError
from gateway.memory.facts import inspect_models
from gateway.scheduler import Scheduler, Snapshot, State
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers

pytestmark = pytest.mark.anyio
MAX_QUEUE = 3


def check(snapshot: Snapshot, cpu_in_use: int, cpu_grants: dict[str, int]) -> None:
    for view in snapshot.models:
        assert view.running <= view.parallel, view
        assert view.holds <= MAX_QUEUE, view
        assert min(view.running, view.waiting, view.quick) >= 0, view
    # Claims never exceed the budget; a model being unloaded still holds memory until its worker
    # exits, and the load that evicted it starts its worker only then.
    staying = [v for v in (*snapshot.models, *snapshot.retiring) if v.state in (State.LOADING, State.LOADED)]
    assert sum(v.memory_bytes for v in staying) <= snapshot.budget, staying
    running = {v.model_id for v in snapshot.models if v.running}
    assert set(cpu_grants) <= running | {v.model_id for v in snapshot.retiring}
    assert cpu_in_use == sum(cpu_grants.values())


@pytest.mark.parametrize("seed", range(3))
async def test_invariants_hold_under_a_random_workload(make_config: Any, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    models = {"a": {"runtime": {"parallel": 2}}, "b": {}, "c": {"ttl": 0.01}}
    for entry in models.values():
        entry["max_queue"] = MAX_QUEUE
    settings = parse_settings(make_config(models, gateway={"room_wait": 0.05, "cpu_threads": 2}), tmp_path)
    facts = inspect_models(settings)
    budget = 2 * max(f.estimate.total for f in facts.values()) + 1
    factory = FakeWorkers({m: FakeScript(load_delay=0.002) for m in models})
    scheduler = Scheduler(settings, facts, factory.engine, budget)
    stop = asyncio.Event()

    async def checker() -> None:
        while not stop.is_set():
            cpu = scheduler.cpu.view()
            check(scheduler.snapshot(), cpu.in_use, cpu.grants)
            await asyncio.sleep(0)

    async def client(number: int) -> None:
        for _ in range(15):
            name = rng.choice("abc")
            with contextlib.suppress(GatewayError):
                async with scheduler.hold(name, generate=rng.random() < 0.8):
                    await asyncio.sleep(rng.random() * 0.005)

    async def operator() -> None:
        for _ in range(10):
            await asyncio.sleep(rng.random() * 0.01)
            action = rng.choice(["unload", "force", "reap", "crash", "reload"])
            name = rng.choice("abc")
            if action == "unload":
                await scheduler.unload(name)
            elif action == "force":
                await scheduler.unload(name, force=True)
            elif action == "reap":
                await scheduler.reap()
            elif action == "crash":
                for worker in factory.workers:
                    if worker.alive and worker.model_id == name:
                        worker.kill()
            else:
                n_ctx = rng.choice([32, 64])
                changed = dict(models, b={"max_queue": MAX_QUEUE, "model": {"n_ctx": n_ctx}})
                new = parse_settings(make_config(changed, gateway={"room_wait": 0.05, "cpu_threads": 2}), tmp_path)
                scheduler.apply(new, inspect_models(new), budget)

    watch = asyncio.create_task(checker())
    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(6)), operator()), 60)
    stop.set()
    await watch
    while scheduler.snapshot().retiring:
        await asyncio.sleep(0.01)
    snapshot = scheduler.snapshot()
    assert all(v.holds == 0 for v in snapshot.models)
    assert scheduler.cpu.in_use == 0 and scheduler.cpu.view().waiting == ()
    await scheduler.close()
    assert factory.live() == []
