"""The scheduler budgets GPU memory per device: fake GPUs (a fake NVML) and fake workers whose loads
log per-device buffers in llama.cpp's CUDA format and allocate them on the fake devices."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.memory.footprint import GPU_CONTEXT_BYTES
from gateway.testing.fakellama import FakeScript
from tests.fast.vram_helpers import GiB, MiB, cuda_log, gpus, rig, until, use

pytestmark = pytest.mark.anyio
GPU = {"model": {"n_gpu_layers": -1}}
SMALL = FakeScript(load_log=cuda_log(100))  # 170 MiB of buffers + the fake's 300 MiB context


async def test_third_model_evicts_by_vram_not_by_host_ram(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB)
    models = {"cpu": {}, "a": dict(GPU), "b": dict(GPU), "c": dict(GPU)}
    scripts = {m: SMALL for m in "abc"}
    r = rig(make_config, tmp_path, models, scripts, fake, gateway={"budgets": {"cuda0": 1200 * MiB}})
    for name in ("cpu", "a", "b", "c"):
        await use(r.scheduler, name)
    # c did not fit next to a and b on cuda0: a, the least recently used model there, went; the CPU
    # model, older still but holding nothing on cuda0, stayed.
    assert r.loaded() == {"cpu", "b", "c"}
    assert fake.peak_used["GPU-0"] <= 1200 * MiB
    assert r.pool("cuda0").budget == 1200 * MiB
    assert r.scheduler.snapshot().pool_used("cuda0") <= 1200 * MiB
    assert r.scheduler.snapshot().pool_used("host") < r.scheduler.budget
    views = {v.model_id: v for v in r.scheduler.views()}
    assert "cuda0" not in views["cpu"].pools
    assert views["b"].placement == "cuda0 (all layers)"
    await r.scheduler.close()
    await until(lambda: not fake.allocations)


async def test_the_larger_of_estimate_and_measured_counts_and_rebalances(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB)
    big = FakeScript(load_log=cuda_log(600))  # 670 MiB of buffers: more than the estimate says
    models = {"a": dict(GPU), "big": dict(GPU)}
    r = rig(make_config, tmp_path, models, {"a": SMALL, "big": big}, fake, gateway={"budgets": {"cuda0": 1200 * MiB}})
    a_estimate = r.scheduler.view("a").pools["cuda0"]
    await use(r.scheduler, "a")
    a = r.scheduler.view("a")
    assert a.measured_pools is not None
    # NVML's per-process figure for the worker: its buffers and its context; below the estimate, which
    # still counts (as on the host): the first decode allocates more than the load did.
    assert a.measured_pools["cuda0"] == 170 * MiB + fake.context_bytes < a_estimate
    assert a.pools["cuda0"] == a_estimate
    estimate = r.scheduler.view("big").pools["cuda0"]
    assert a.pools["cuda0"] + estimate <= 1200 * MiB  # planned to fit together...
    await use(r.scheduler, "big")
    measured = r.scheduler.view("big").pools["cuda0"]
    assert measured == 670 * MiB + fake.context_bytes > estimate  # ...measured larger: over budget
    await until(lambda: r.loaded() == {"big"})  # so a, idle, was unloaded
    await r.scheduler.close()


async def test_buffers_and_context_without_per_process_figures(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB, processes_visible=False)
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {"a": SMALL}, fake)
    await use(r.scheduler, "a")
    view = r.scheduler.view("a")
    assert view.measured_pools is not None and view.measured_pools["cuda0"] == 170 * MiB + GPU_CONTEXT_BYTES
    await r.scheduler.close()


async def test_each_worker_sees_only_its_devices(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB, 8 * GiB)
    models = {"one": {"model": {"n_gpu_layers": -1, "devices": ["cuda1"]}}, "cpu": {}}
    r = rig(make_config, tmp_path, models, {"one": FakeScript(load_log=cuda_log(100))}, fake)
    estimate = r.scheduler.view("one").pools["cuda1"]
    await use(r.scheduler, "one")
    await use(r.scheduler, "cpu")
    spawns = {model: (env, llama) for model, env, llama in r.spawns}
    assert spawns["one"][0] == {"CUDA_VISIBLE_DEVICES": "GPU-1"}
    assert spawns["one"][1] == {"n_gpu_layers": -1, "main_gpu": 0}
    assert spawns["cpu"][0] == {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
    assert spawns["cpu"][1] == {"n_gpu_layers": 0}
    assert {uuid for _, uuid in fake.allocations} == {"GPU-1"}  # the worker's cuda0 is GPU-1
    assert r.scheduler.view("one").pools["cuda1"] == max(estimate, 170 * MiB + fake.context_bytes)
    await r.scheduler.close()


async def test_cpu_only_machine_places_nothing(make_config: Any, tmp_path: Path) -> None:
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {}, None)
    await use(r.scheduler, "a")
    assert r.spawns == [("a", None, None)]  # as before pools: no environment, no placement arguments
    view = r.scheduler.view("a")
    assert set(view.pools) == {"host"}
    assert view.pools["host"] >= view.estimated_bytes
    assert [p.name for p in r.scheduler.snapshot().pools] == ["host"]
    await r.scheduler.close()


async def test_reload_recomputes_the_pools(make_config: Any, tmp_path: Path) -> None:
    from gateway.config import parse_settings
    from gateway.memory.facts import inspect_models

    fake = gpus(8 * GiB)
    models = {"a": dict(GPU)}
    r = rig(make_config, tmp_path, models, {"a": SMALL}, fake, gateway={"budgets": {"cuda0": 1200 * MiB}})
    assert r.pool("cuda0").budget == 1200 * MiB
    settings = parse_settings(make_config({"a": dict(GPU)}, gateway={"budgets": {"cuda0": "50%"}}), tmp_path)
    r.scheduler.apply(settings, inspect_models(settings), r.scheduler.budget)
    assert r.pool("cuda0").budget == 4 * GiB
    await r.scheduler.close()


async def test_no_nvml_library_is_a_cpu_only_machine(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB)
    fake.library = False  # NVMLError_LibraryNotFound
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {}, fake)
    await use(r.scheduler, "a")
    assert r.spawns == [("a", None, None)]
    assert [p.name for p in r.scheduler.snapshot().pools] == ["host"]
    await r.scheduler.close()


async def test_a_model_larger_than_a_gpu_budget_never_fits(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB)
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {"a": SMALL}, fake, gateway={"budgets": {"cuda0": 100 * MiB}})
    with pytest.raises(GatewayError) as info:
        await use(r.scheduler, "a")
    assert (info.value.status, info.value.code) == (503, "model_exceeds_memory_budget")
    assert "cuda0's budget of 100 MiB" in info.value.message
    assert r.spawns == []
    await r.scheduler.close()


def test_device_arguments_prefer_the_placement() -> None:
    """-1 ("all") passed raw is read as "none" by older llama.cpp builds: it goes as INT32_MAX."""
    from gateway.engine.worker.backend import device_arguments

    assert device_arguments({"n_gpu_layers": -1}) == {"n_gpu_layers": 0x7FFFFFFF}
    assert device_arguments({"n_gpu_layers": 0, "placement": {"n_gpu_layers": -1}}) == {"n_gpu_layers": 0x7FFFFFFF}
    assert device_arguments({"n_gpu_layers": 12}) == {"n_gpu_layers": 12}
    placed = {"n_gpu_layers": -1, "placement": {"n_gpu_layers": 10, "main_gpu": 0, "tensor_split": [0.7, 0.3]}}
    assert device_arguments(placed) == {"n_gpu_layers": 10, "main_gpu": 0, "tensor_split": [0.7, 0.3]}


async def test_a_spread_model_is_measured_on_each_device(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB, 8 * GiB)
    models = {"wide": {"model": {"n_gpu_layers": -1, "tensor_split": [0.5, 0.5]}}}
    script = FakeScript(load_log=cuda_log(100, device=0) + cuda_log(60, device=1))
    r = rig(make_config, tmp_path, models, {"wide": script}, fake)
    await use(r.scheduler, "wide")
    (_, env, llama), *_ = r.spawns
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-0,GPU-1"}
    assert llama == {"n_gpu_layers": -1, "main_gpu": 0, "tensor_split": [0.5, 0.5]}
    view = r.scheduler.view("wide")
    assert view.measured_pools == {"cuda0": 170 * MiB + fake.context_bytes, "cuda1": 130 * MiB + fake.context_bytes}
    assert all(view.pools[p] >= view.measured_pools[p] for p in ("cuda0", "cuda1"))
    assert view.placement.startswith("spread over cuda0, cuda1")
    await r.scheduler.close()


async def test_a_build_that_cannot_offload_leaves_only_the_host_pool(
    make_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The CPU wheel of llama-cpp-python on a GPU machine: placed on cuda0, everything lands in RAM.
    cpu_log = (
        "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
        "llama_kv_cache:        CPU KV buffer size =    45.00 MiB",
        "sched_reserve:        CPU compute buffer size =    99.38 MiB",
    )
    fake = gpus(8 * GiB)
    models = {"a": dict(GPU), "b": dict(GPU)}
    r = rig(make_config, tmp_path, models, dict.fromkeys("ab", FakeScript(load_log=cpu_log)), fake)
    await use(r.scheduler, "a")
    assert "cannot offload to GPUs" in caplog.text
    assert [p.name for p in r.scheduler.snapshot().pools] == ["host"]
    assert set(r.scheduler.view("a").pools) == {"host"}
    await use(r.scheduler, "b")
    assert r.spawns[-1] == ("b", None, None)  # placed as on a CPU-only machine
    await r.scheduler.close()


async def test_used_never_exceeds_the_budget_through_a_swap(make_config: Any, tmp_path: Path) -> None:
    """A load claims its room while the model it evicts still holds its memory: that claim is reported
    apart (`loading`), so what the pool reports used never reads over the budget, at any instant of
    a swap, in the snapshot and in the figures /metrics serves."""
    from gateway.scheduler.gauges import pool_states

    fake = gpus(8 * GiB, lag=0.2)
    budget = 700 * MiB  # one model at a time
    models = {"a": dict(GPU), "b": dict(GPU)}
    r = rig(make_config, tmp_path, models, {"a": SMALL, "b": SMALL}, fake, gateway={"budgets": {"cuda0": budget}})
    samples: list[tuple[int, int, int]] = []
    done = False

    async def sample() -> None:
        while not done:
            snapshot = r.scheduler.snapshot()
            figures = next(p for p in pool_states(r.scheduler) if p.pool == "cuda0")
            samples.append((snapshot.pool_used("cuda0"), snapshot.pool_loading("cuda0"), figures.used))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    for name in ("a", "b", "a"):
        await use(r.scheduler, name)
    done = True
    await sampler
    assert max(used for used, _, _ in samples) <= budget
    assert all(used == served for used, _, served in samples)
    # The swap was seen: a load's claim while its victim still held its memory (together over budget).
    assert any(used > 0 and loading > 0 and used + loading > budget for used, loading, _ in samples)
    assert fake.peak_used["GPU-0"] <= budget
    await r.scheduler.close()


async def test_a_gpu_model_is_measured_again_after_its_first_decode(make_config: Any, tmp_path: Path) -> None:
    """The measurement after load misses what the first decode allocates on the device (cuBLAS,
    workspaces, CUDA graphs): the model is measured again once its first generation ends, and the
    larger figure counts, making room by unloading idle models on that device."""
    from tests.fast.test_worker_loop import params

    fake = gpus(8 * GiB)
    decoding = FakeScript(load_log=cuda_log(100), decode_bytes=600 * MiB)
    models = {"idle": dict(GPU), "decoding": dict(GPU)}
    r = rig(
        make_config, tmp_path, models, {"idle": SMALL, "decoding": decoding}, fake, {"budgets": {"cuda0": 1500 * MiB}}
    )
    await use(r.scheduler, "idle")
    await use(r.scheduler, "decoding")
    view = r.scheduler.view("decoding")
    after_load = view.pools["cuda0"]
    assert view.measured_pools is not None and view.measured_pools["cuda0"] == 170 * MiB + fake.context_bytes
    assert r.loaded() == {"idle", "decoding"}  # they fit together as estimated
    async with r.scheduler.hold("decoding") as held:
        async for _ in held.engine.generate(params("hello")):
            pass
    decoded = 770 * MiB + fake.context_bytes  # what NVML now lists for the worker
    await until(lambda: r.scheduler.view("decoding").pools["cuda0"] == decoded)
    assert decoded > after_load
    await until(lambda: r.loaded() == {"decoding"})  # the larger figure left no room for the idle one
    assert r.scheduler.snapshot().pool_used("cuda0") <= 1500 * MiB
    await r.scheduler.close()


async def test_a_serving_gpu_model_is_measured_again_on_a_timer(make_config: Any, tmp_path: Path) -> None:
    """What a worker allocates on its GPU while it serves (a larger batch, a longer prompt) counts as
    the reaper's timer reads the devices again; a lower reading never lowers the figure."""
    fake = gpus(8 * GiB)
    r = rig(make_config, tmp_path, {"a": dict(GPU)}, {"a": SMALL}, fake)
    await r.scheduler.start(reap_interval=0.05)
    await use(r.scheduler, "a")
    pid = next(pid for (pid, _uuid) in fake.allocations)
    grown = 170 * MiB + fake.context_bytes + 900 * MiB  # above the estimate
    assert fake.allocate(pid, "GPU-0", 900 * MiB) is None
    await until(lambda: r.scheduler.view("a").pools["cuda0"] == grown)
    with fake._lock:
        fake.allocations[(pid, "GPU-0")] -= 900 * MiB  # llama.cpp gave some back: the peak still counts
    await r.scheduler.devices.refresh()
    r.scheduler._remeasure_devices()
    assert r.scheduler.view("a").pools["cuda0"] == grown
    await r.scheduler.close()
