"""Running out of device memory, and waiting for it: a load that hits OOM evicts on that device and is
retried once, else a 503 that explains; the next load after an unload waits (bounded) until the freed
memory shows; other processes' use is respected; a worker dying of a runtime CUDA OOM is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.scheduler import State
from gateway.testing.fakellama import FakeScript
from tests.fast.vram_helpers import GiB, MiB, cuda_log, gpus, rig, until, use

pytestmark = pytest.mark.anyio
GPU = {"model": {"n_gpu_layers": -1}}
SMALL = FakeScript(load_log=cuda_log(100))  # 170 MiB of buffers + the fake's 300 MiB context


async def test_oom_at_load_evicts_waits_and_retries(make_config: Any, tmp_path: Path) -> None:
    # 2 GiB device with a small reserve: "liar" is estimated at ~0.5 GiB but allocates 1.4 GiB.
    fake = gpus(2 * GiB, lag=0.2)
    liar = FakeScript(load_log=cuda_log(1330))
    models = {"a": dict(GPU), "liar": dict(GPU)}
    r = rig(make_config, tmp_path, models, {"a": SMALL, "liar": liar}, fake, gateway={"gpu_reserve": 64 * MiB})
    await use(r.scheduler, "a")
    await use(r.scheduler, "liar")
    assert r.loaded() == {"liar"}
    assert [s[0] for s in r.spawns] == ["a", "liar", "liar"]  # one retry
    # The retry started once a's memory showed free again.
    assert r.free_at_spawn[-1]["GPU-0"] >= 1400 * MiB + fake.context_bytes
    await r.scheduler.close()


async def test_oom_twice_is_a_503_naming_device_need_and_free(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(2 * GiB)
    huge = FakeScript(load_log=cuda_log(1830))  # 1.9 GiB of buffers + context: never fits the device
    models = {"a": dict(GPU), "huge": dict(GPU)}
    gateway = {"gpu_reserve": 64 * MiB}
    r = rig(make_config, tmp_path, models, {"a": SMALL, "huge": huge}, fake, gateway=gateway, free_wait=0.2)
    await use(r.scheduler, "a")
    with pytest.raises(GatewayError) as info:
        await use(r.scheduler, "huge")
    error = info.value
    assert (error.status, error.code, error.type) == (503, "device_out_of_memory", "server_error")
    assert "cuda0 is out of memory" in error.message
    assert "needed 2412 MiB" in error.message  # the 1900 MiB allocation that failed and a context
    assert "MiB free" in error.message
    assert error.headers()["Retry-After"]
    assert [s[0] for s in r.spawns] == ["a", "huge", "huge"]  # a was evicted for the one retry
    assert r.scheduler.view("huge").state is State.UNLOADED  # not a broken model: no failure cooldown
    await r.scheduler.close()


async def test_next_load_waits_until_freed_memory_is_visible(make_config: Any, tmp_path: Path) -> None:
    # A 1000 MiB device: b fits only once a has gone and the driver shows a's memory free again.
    fake = gpus(1000 * MiB, lag=0.3)
    models = {"a": dict(GPU), "b": dict(GPU)}
    r = rig(make_config, tmp_path, models, {"a": SMALL, "b": SMALL}, fake, gateway={"gpu_reserve": 64 * MiB})
    await use(r.scheduler, "a")
    before = r.free()["GPU-0"]
    await use(r.scheduler, "b")  # evicts a; b's worker starts only once a's memory shows free
    assert r.loaded() == {"b"}
    assert r.free_at_spawn[-1]["GPU-0"] == before + 470 * MiB
    await r.scheduler.close()


async def test_the_wait_for_freed_memory_is_bounded(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(1000 * MiB, lag=3600)  # the driver never shows it in this test's lifetime
    models = {"a": dict(GPU), "b": dict(GPU)}
    gateway = {"gpu_reserve": 64 * MiB}
    r = rig(make_config, tmp_path, models, {"a": SMALL, "b": SMALL}, fake, gateway=gateway, free_wait=0.2)
    await use(r.scheduler, "a")
    await use(r.scheduler, "b")  # it gave up waiting and tried: b's real need fits what is free
    assert r.loaded() == {"b"}
    assert r.free_at_spawn[-1]["GPU-0"] < 516 * MiB + 64 * MiB  # less than the estimate asks for
    await r.scheduler.close()


async def test_runtime_oom_fails_requests_and_unloads_idle_models_there(make_config: Any, tmp_path: Path) -> None:
    from tests.fast.test_worker_loop import params

    fake = gpus(8 * GiB)
    crashing = FakeScript(load_log=cuda_log(100), oom_after_steps=0)
    models = {"idle": dict(GPU), "crashing": dict(GPU), "cpu": {}}
    r = rig(make_config, tmp_path, models, {"idle": SMALL, "crashing": crashing}, fake)
    await use(r.scheduler, "idle")
    await use(r.scheduler, "cpu")
    async with r.scheduler.hold("crashing") as held:
        generation = held.engine.generate(params("hello"))
        with pytest.raises(GatewayError) as info:
            async for _ in generation:
                pass
    assert info.value.code == "model_worker_crashed"
    assert "out of memory on cuda0" in info.value.message
    await until(lambda: r.loaded() == {"cpu"})  # the idle model on cuda0 went; the CPU one stayed
    await r.scheduler.close()


async def test_other_processes_use_is_respected(make_config: Any, tmp_path: Path) -> None:
    # Another process holds 1.5 GiB of a 2 GiB device: no room now, whatever the budget says.
    fake = gpus(2 * GiB)
    fake.devices[0].foreign = 1536 * MiB
    gateway = {"gpu_reserve": 64 * MiB, "room_wait": 0.2}
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {"a": SMALL}, fake, gateway=gateway)
    with pytest.raises(GatewayError) as info:
        await use(r.scheduler, "a")
    assert (info.value.status, info.value.code) == (503, "model_capacity_unavailable")
    assert r.spawns == []
    await r.scheduler.close()


async def test_a_load_waiting_for_device_memory_starts_when_it_frees(make_config: Any, tmp_path: Path) -> None:
    import asyncio

    fake = gpus(2 * GiB)
    fake.devices[0].foreign = 1536 * MiB
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {"a": SMALL}, fake, gateway={"gpu_reserve": 64 * MiB})
    waiting = asyncio.create_task(use(r.scheduler, "a"))
    await asyncio.sleep(0.1)
    assert not waiting.done() and r.spawns == []
    fake.devices[0].foreign = 0  # the other process exits: the device is read again while waiting
    await asyncio.wait_for(waiting, 10)
    assert r.loaded() == {"a"}
    await r.scheduler.close()
