"""A real worker reports the buffers llama.cpp logged while loading (captured with verbose off), and
they agree with the GGUF header and with the worker's measured resident memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config import ModelEntry
from gateway.engine.loadlog import HOST, LoadReport
from gateway.engine.process.handle import ProcessEngine
from gateway.gguf.header import read_gguf_info
from gateway.memory.estimate import WORKER_BASELINE_BYTES
from tests.real.server import SMOLLM

pytestmark = pytest.mark.real
MiB = 2**20
N_CTX = 1024


async def load_and_measure(entry: ModelEntry) -> tuple[LoadReport | None, int | None]:
    engine = ProcessEngine("smollm2", entry, spares=None)
    await engine.start()
    try:
        return engine.load_report, engine.measured_bytes()
    finally:
        await engine.stop()


def test_captured_buffers_match_the_header_and_resident_memory() -> None:
    entry = ModelEntry.model_validate(
        {"model": {"path": str(SMOLLM), "n_ctx": N_CTX}, "runtime": {"thread_count": 1, "verbose": False}}
    )
    report, rss = asyncio.run(load_and_measure(entry))
    assert report is not None and rss is not None
    assert report.oom is None
    assert set(report.by_device()) == {HOST}  # a CPU build: everything in host memory
    sizes = {kind: sum(b.bytes for b in report.buffers if b.kind == kind) for kind in ("model", "KV", "compute")}
    info = read_gguf_info(Path(SMOLLM))
    # llama.cpp logs sizes rounded to 0.01 MiB
    assert abs(sizes["model"] - info.tensor_bytes) <= 0.01 * MiB
    assert abs(sizes["KV"] - N_CTX * info.kv_bytes_per_token()) <= 0.01 * MiB
    assert sizes["compute"] > 0
    # Resident memory holds the weights (mapped and read in) and the zeroed KV cache, and no more
    # than every buffer plus the interpreter (compute buffers are only partly touched).
    host_buffers = report.by_device()[HOST]
    assert sizes["model"] + sizes["KV"] <= rss <= host_buffers + 2 * WORKER_BASELINE_BYTES, (rss, sizes)


def test_gpu_check_models_load_in_a_real_worker(tmp_path: Path) -> None:
    """scripts/gpu-check's synthetic models (no vocabulary) load in llama.cpp, and the capture reads them."""
    from tests.fast.test_gpu_check import gpu_check

    path = gpu_check.write_model(tmp_path / "m.gguf", layers=2, embedding=256)
    entry = ModelEntry.model_validate({"model": {"path": str(path), "n_ctx": 512}, "runtime": {"thread_count": 1}})
    report, _ = asyncio.run(load_and_measure(entry))
    assert report is not None
    model = sum(b.bytes for b in report.buffers if b.kind == "model")
    assert abs(model - read_gguf_info(path).tensor_bytes) <= 0.01 * MiB


def test_a_failed_load_says_why(tmp_path: Path) -> None:
    """llama.cpp's own error line (dropped by llama-cpp-python's logger) reaches the load failure."""
    from gateway.errors import GatewayError
    from tests.ggufgen import write_tiny_gguf

    broken = write_tiny_gguf(tmp_path / "broken.gguf")  # a header llama.cpp rejects
    entry = ModelEntry.model_validate({"model": {"path": str(broken)}, "runtime": {"thread_count": 1}})
    with pytest.raises(GatewayError) as info:
        asyncio.run(load_and_measure(entry))
    assert "error loading model" in info.value.message


def test_gpu_check_runs_its_course_against_a_fake_device(tmp_path: Path) -> None:
    """scripts/gpu-check's course end to end through the scheduler on real CPU workers, with a
    stand-in for NVML that reports each worker's resident memory as its use of the device, judged
    as a GPU run is: this CPU build keeps every buffer in host memory, so the scheduler falls back
    to budgeting the host and the judge must say the run proved nothing about VRAM (a CPU build
    can never pass the GPU check)."""
    import psutil

    from gateway.memory.pools import Device
    from tests.fast.test_gpu_check import gpu_check

    gib = 2**30

    def fake_devices() -> list[Device]:
        workers = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        processes = []
        for worker in workers:
            try:
                processes.append((worker.pid, int(worker.memory_info().rss)))
            except psutil.Error:
                continue
        used = sum(size for _, size in processes)
        return [Device("cuda0", "GPU-fake", 0, "Fake GPU", 100 * gib, 100 * gib - used, used, tuple(processes))]

    class Inventory:
        def read(self) -> list[Device]:
            return fake_devices()

    tiny = {"small": (2, 256), "medium": (3, 256), "large": (4, 256)}
    summary = asyncio.run(gpu_check.run(["small", "medium", "large", "small"], tmp_path, tiny, Inventory()))
    failures = gpu_check.judge(summary)
    assert any("did not force eviction" in f for f in failures), failures
    assert not any("> budget" in f or "not seen free again" in f for f in failures), failures
    assert [load.model for load in summary.loads] == ["small", "medium", "large", "small"]
    assert all(load.nvml for load in summary.loads)
    assert all(load.scheduler == 0 for load in summary.loads)  # nothing counted on the device
    assert summary.budget < sum(load.need for load in summary.loads[:3])


def test_the_scheduler_measures_a_real_load() -> None:
    """Through the scheduler on a CPU-only machine: the worker's captured buffers are all host memory,
    and the slot's measured vector (one pool, the host's) is the worker's resident memory, which holds
    those buffers' weights and KV cache."""
    from gateway.config import parse_settings
    from gateway.memory.facts import inspect_models
    from gateway.scheduler import Scheduler, SlotView

    document = {"models": {"smollm2": {"model": {"path": str(SMOLLM), "n_ctx": N_CTX}, "runtime": {"thread_count": 1}}}}
    settings = parse_settings(document, Path("."))

    async def load() -> tuple[LoadReport | None, SlotView]:
        scheduler = Scheduler(settings, inspect_models(settings), ProcessEngine, budget=4 * 2**30)
        try:
            async with scheduler.hold("smollm2", generate=False) as held:
                return held.engine.memory_report(), held.view()
        finally:
            await scheduler.close()

    report, view = asyncio.run(load())
    assert report is not None and set(report.by_device()) == {HOST}
    assert view.measured_bytes is not None and view.measured_pools == {HOST: view.measured_bytes}
    assert view.pools == {HOST: max(view.measured_bytes, view.estimated_bytes)}
    weights_and_kv = sum(b.bytes for b in report.buffers if b.kind in ("model", "KV"))
    assert weights_and_kv <= view.measured_bytes <= report.by_device()[HOST] + 2 * WORKER_BASELINE_BYTES


def test_a_worker_placed_on_gpus_loads_with_the_placement_arguments() -> None:
    """What the scheduler gives a GPU placement (a device environment, llama.cpp's n_gpu_layers,
    main_gpu and tensor_split) reaches llama.cpp: this CPU build accepts it and loads on the host."""
    from gateway.engine.base import DevicePlacement

    entry = ModelEntry.model_validate({"model": {"path": str(SMOLLM), "n_ctx": 256}, "runtime": {"thread_count": 1}})
    engine = ProcessEngine("smollm2", entry)
    llama = {"n_gpu_layers": -1, "main_gpu": 0, "tensor_split": [0.5, 0.5]}
    engine.place(DevicePlacement({"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, llama, ("cuda0", "cuda1")))
    assert engine.worker_env == {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}

    async def load() -> LoadReport | None:
        await engine.start()
        try:
            return engine.memory_report()
        finally:
            await engine.stop()

    report = asyncio.run(load())
    assert report is not None and report.oom is None
    assert set(report.by_device()) == {HOST}


def test_a_cpu_build_on_a_gpu_machine_falls_back_to_the_host_pool() -> None:
    """With a (fake) GPU in the inventory, the scheduler places the model on it; the real worker's
    captured buffer lines show this llama.cpp build kept everything in host memory, so the scheduler
    budgets the host only from then on, and the slot's vector is the worker's resident memory."""
    from gateway.config import parse_settings
    from gateway.memory.facts import inspect_models
    from gateway.memory.inventory import SystemInventory
    from gateway.scheduler import Scheduler, SlotView
    from gateway.testing.fakenvml import FakeDevice, FakeGpus

    model = {"path": str(SMOLLM), "n_ctx": N_CTX, "n_gpu_layers": -1}
    settings = parse_settings({"models": {"smollm2": {"model": model, "runtime": {"thread_count": 1}}}}, Path("."))
    inventory = SystemInventory(nvml=FakeGpus([FakeDevice("GPU-fake", 8 * 2**30)]), sysfs=Path("/nonexistent"))

    async def load() -> tuple[SlotView, SlotView, list[str]]:
        scheduler = Scheduler(settings, inspect_models(settings), ProcessEngine, 4 * 2**30, inventory=inventory)
        before = scheduler.view("smollm2")
        try:
            async with scheduler.hold("smollm2", generate=False) as held:
                return before, held.view(), [p.name for p in scheduler.snapshot().pools]
        finally:
            await scheduler.close()

    before, after, pools = asyncio.run(load())
    assert before.placement == "cuda0 (all layers)" and "cuda0" in before.pools
    assert pools == ["host"]
    assert after.measured_bytes is not None and after.pools == {HOST: max(after.measured_bytes, after.estimated_bytes)}
