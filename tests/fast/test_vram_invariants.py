"""Under a random workload on fake GPUs, what our models claim on a device never exceeds its budget,
the device never holds more of ours than that, and every byte comes back in the end."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.scheduler import Snapshot, State
from gateway.testing.fakellama import FakeScript
from tests.fast.vram_helpers import GiB, MiB, cuda_log, gpus, rig, until

pytestmark = pytest.mark.anyio
BUDGET = 1200 * MiB  # two of the three GPU models at a time


def claimed(snapshot: Snapshot, pool: str) -> int:
    staying = [v for v in (*snapshot.models, *snapshot.retiring) if v.state in (State.LOADING, State.LOADED)]
    return sum(v.pools.get(pool, 0) for v in staying)


@pytest.mark.parametrize("seed", range(3))
async def test_device_claims_stay_inside_the_budget(make_config: Any, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    fake = gpus(8 * GiB, lag=0.02)
    gpu = {"model": {"n_gpu_layers": -1}, "max_queue": 4}
    models = {"a": dict(gpu), "b": dict(gpu), "c": dict(gpu), "cpu": {"max_queue": 4}}
    script = FakeScript(load_log=cuda_log(100), load_delay=0.002, reply_tokens=3)
    gateway = {"budgets": {"cuda0": BUDGET}, "room_wait": 0.2, "cpu_threads": 0}
    r = rig(make_config, tmp_path, models, dict.fromkeys("abc", script), fake, gateway=gateway, free_wait=0.5)
    scheduler = r.scheduler
    stop = asyncio.Event()

    async def checker() -> None:
        while not stop.is_set():
            snapshot = scheduler.snapshot()
            assert claimed(snapshot, "cuda0") <= BUDGET, [
                (v.model_id, v.state.value, v.draining, v.retiring, v.holds, v.pools.get("cuda0"))
                for v in (*snapshot.models, *snapshot.retiring)
            ]
            await asyncio.sleep(0)

    async def client() -> None:
        for _ in range(12):
            with contextlib.suppress(GatewayError):
                async with scheduler.hold(rng.choice(["a", "b", "c", "cpu"]), generate=False):
                    await asyncio.sleep(rng.random() * 0.005)

    async def operator() -> None:
        for _ in range(6):
            await asyncio.sleep(rng.random() * 0.01)
            name = rng.choice("abc")
            if rng.random() < 0.5:
                await scheduler.unload(name)
            else:
                await scheduler.unload(name, force=True)

    watch = asyncio.create_task(checker())
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(5)), operator()), 60)
    stop.set()
    await watch
    assert fake.peak_used["GPU-0"] <= BUDGET
    assert all(v.holds == 0 for v in scheduler.snapshot().models)
    await scheduler.close()
    await until(lambda: not fake.allocations)
