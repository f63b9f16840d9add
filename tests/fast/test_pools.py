"""Pool budgets from models.yaml, the GPU inventory through a fake NVML and a fake sysfs, and the
footprint of a model per placement."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySection, ModelSection
from gateway.errors import ConfigError
from gateway.gguf.header import read_gguf_info
from gateway.memory.estimate import estimate
from gateway.memory.footprint import GPU_CONTEXT_BYTES, footprint, layer_devices, measured_vector
from gateway.memory.inventory import amd_devices, nvidia_devices, read_devices, wait_until_free
from gateway.memory.planner import Placement
from gateway.memory.pools import HOST, Device, PoolState, Vector, resolve_pools, unknown_budget_names
from gateway.testing.fakenvml import FakeDevice, FakeGpus
from tests.ggufgen import write_tiny_gguf

GiB = 2**30


def two_gpus() -> FakeGpus:
    """cuda0 with another process (pid 42, 9 GiB) and 1 GiB of driver use; cuda1 hides its processes."""
    nvml = FakeGpus(
        [
            FakeDevice("GPU-aaa", 140 * GiB, foreign=GiB, name="NVIDIA H200"),
            FakeDevice("GPU-bbb", 140 * GiB, foreign=GiB, name="NVIDIA H200", processes_visible=False),
        ],
        context_bytes=0,
    )
    assert nvml.allocate(42, "GPU-aaa", 9 * GiB) is None
    return nvml


def test_nvml_devices_by_uuid_with_foreign_processes() -> None:
    nvml = two_gpus()
    first, second = nvidia_devices(nvml)
    assert (first.name, first.uuid, first.description) == ("cuda0", "GPU-aaa", "NVIDIA H200")
    assert (first.total, first.free, first.used) == (140 * GiB, 130 * GiB, 10 * GiB)
    assert first.processes == ((42, 9 * GiB),)
    assert first.used_by([42, 7]) == 9 * GiB
    assert second.name == "cuda1"
    assert second.processes is None  # not visible: per-process figures unknown, not zero
    assert second.used_by([42]) is None
    assert nvml.initialised == 0  # shut down again


def test_no_nvml_library_means_cpu_only() -> None:
    assert nvidia_devices(FakeGpus([], library=False)) == []
    assert read_devices(FakeGpus([], library=False), sysfs=Path("/nonexistent")) == []


def test_amd_devices_from_sysfs(tmp_path: Path) -> None:
    for card, total, used in (("card1", 24 * GiB, 2 * GiB), ("card0", 16 * GiB, GiB)):
        device = tmp_path / card / "device"
        device.mkdir(parents=True)
        (device / "mem_info_vram_total").write_text(f"{total}\n")
        (device / "mem_info_vram_used").write_text(f"{used}\n")
    (tmp_path / "card0-DP-1").mkdir()  # connectors are not cards
    (tmp_path / "card0" / "device" / "unique_id").write_text("abc123\n")
    rocm0, rocm1 = amd_devices(tmp_path)
    assert (rocm0.name, rocm0.uuid, rocm0.total, rocm0.free) == ("rocm0", "abc123", 16 * GiB, 15 * GiB)
    assert (rocm1.name, rocm1.uuid, rocm1.free) == ("rocm1", "card1", 22 * GiB)


def device(name: str, total: int, free: int, uuid: str = "") -> Device:
    return Device(name, uuid or f"GPU-{name}", int(name[-1]), "GPU", total, free, total - free)


def test_budgets_resolve_per_pool() -> None:
    devices = [device("cuda0", 80 * GiB, 70 * GiB), device("cuda1", 48 * GiB, 48 * GiB), device("cuda2", 24 * GiB, 0)]
    budgets: dict[str, int | str] = {"host": "50%", "cuda0": "auto", "GPU-cuda1": 40 * GiB, "gpu": "50%"}
    host, cuda0, cuda1, cuda2 = resolve_pools(devices, budgets, None, 64 * GiB, gpu_reserve=GiB)
    assert (host.name, host.budget, host.free) == (HOST, 32 * GiB, None)
    assert (cuda0.budget, cuda0.free, cuda0.reserve) == (79 * GiB, 70 * GiB, GiB)  # auto: total - reserve
    assert cuda1.budget == 40 * GiB  # by UUID
    assert cuda2.budget == 12 * GiB  # `gpu` covers the rest
    assert cuda0.available(held=0) == 69 * GiB  # free - reserve is tighter than the budget
    assert cuda2.available(held=0) == -GiB


def host_budget(budgets: dict[str, int | str], memory_budget: int | None, host_total: int) -> int:
    return resolve_pools([], budgets, memory_budget, host_total, 0)[0].budget


def test_host_budget_is_memory_budget_or_auto() -> None:
    assert host_budget({}, None, 100) == 80  # as before pools: 80% of RAM
    assert host_budget({}, 42, 100) == 42
    assert host_budget({"host": 7}, None, 100) == 7


def test_limit_is_the_smaller_of_budget_and_device() -> None:
    assert PoolState("cuda0", 100, total=50, free=50, reserve=5).limit == 45
    assert PoolState(HOST, 100).limit == 100


def test_unknown_budget_names() -> None:
    assert unknown_budget_names({"host": 1, "cuda0": 1, "cuda3": 1}, [device("cuda0", 1, 1)]) == ["cuda3"]


def test_config_accepts_budgets_and_placement() -> None:
    section = GatewaySection.model_validate(
        {"budgets": {"host": "16GiB", "cuda0": "auto", "cuda1": "40GiB", "gpu": "90%"}, "placement": "spread"}
    )
    assert section.budgets == {"host": 16 * GiB, "cuda0": "auto", "cuda1": 40 * GiB, "gpu": "90%"}
    assert section.gpu_reserve == GiB
    model = ModelSection.model_validate(
        {"path": "m.gguf", "n_gpu_layers": -1, "devices": ["cuda1", "cuda0"], "tensor_split": [3, 1], "main_gpu": 1}
    )
    assert model.tensor_split == [3, 1]


@pytest.mark.parametrize(
    ("section", "data", "message"),
    [
        (GatewaySection, {"budgets": {"cpu": "1GiB"}}, "pools are host, gpu, cuda0"),
        (GatewaySection, {"budgets": {"cuda0": "150%"}}, "at most 100%"),
        (GatewaySection, {"budgets": {"host": "1GiB"}, "memory_budget": "2GiB"}, "give one"),
        (ModelSection, {"path": "m", "devices": ["host"]}, "name GPUs"),
        (ModelSection, {"path": "m", "tensor_split": [0, 0]}, "not all 0"),
        (ModelSection, {"path": "m", "devices": ["cuda0"], "tensor_split": [1, 1]}, "one share per entry"),
    ],
)
def test_config_rejects(section: type[GatewaySection | ModelSection], data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        section.model_validate(data)


def test_config_error_names_the_path(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    data = {"gateway": {"budgets": {"cuda0": "lots"}}, "models": {"m": {"model": {"path": "m.gguf"}}}}
    with pytest.raises(ConfigError, match=r"gateway\.budgets\.cuda0"):
        parse_settings(data, tmp_path, check_files=False)


def test_layers_follow_llama_cpp_assignment() -> None:
    # 4 layers + head; all offloaded, split 1:1 → layers 0-1 on device 0, 2-3 and the head on device 1
    assert layer_devices(4, -1, (1.0, 1.0)) == [0, 0, 0, 1, 1]
    assert layer_devices(4, -1, (1.0,)) == [0, 0, 0, 0, 0]
    assert layer_devices(4, 2, (1.0,)) == [None, None, None, 0, 0]  # the last layer and the head
    assert layer_devices(4, 0, (1.0,)) == [None] * 5


def test_footprint_on_cpu_is_the_host_estimate(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf", layers=4))
    assert footprint(info, 1024, Placement()).vector.as_dict() == {HOST: estimate(info, 1024).total}
    # n_gpu_layers set but no GPU placed: still the host
    assert footprint(info, 1024, Placement((), None, -1)).vector.as_dict() == {HOST: estimate(info, 1024).total}


def test_footprint_moves_layers_to_gpus(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf", layers=4, embedding=64))
    layer = 64 * 64 * 4
    assert info.layer_bytes == (layer,) * 4
    assert info.input_bytes == 32 * 64 * 4
    assert not info.has_output_tensor
    full = footprint(info, 1024, Placement(("cuda0",), None, -1))
    # all layers + the tied head (a copy of token_embd) on the GPU; token_embd itself stays on the host
    assert full.weights.as_dict() == {HOST: info.input_bytes, "cuda0": 4 * layer + info.input_bytes}
    assert full.kv_cache["cuda0"] == 1024 * info.kv_bytes_per_token()
    assert full.overhead["cuda0"] == GPU_CONTEXT_BYTES
    assert full.compute["cuda0"] > 0
    spread = footprint(info, 1024, Placement(("cuda0", "cuda1"), (0.5, 0.5), -1))
    assert spread.weights["cuda0"] == 3 * layer  # layers 0-2 of 0-3 + head (as layer_devices above)
    assert spread.kv_cache["cuda0"] == 3 * spread.kv_cache["cuda1"]
    assert spread.weights["cuda1"] == layer + info.input_bytes
    partial = footprint(info, 1024, Placement(("cuda0",), None, 2))
    assert partial.weights.as_dict() == {HOST: info.input_bytes + 3 * layer, "cuda0": layer + info.input_bytes}
    assert partial.kv_cache[HOST] == 3 * partial.kv_cache["cuda0"]
    # more context costs more on the device holding the layers
    assert footprint(info, 4096, Placement(("cuda0",), None, -1)).vector["cuda0"] > full.vector["cuda0"]


def test_wait_until_free_sees_memory_come_back() -> None:
    readings = iter([{"cuda0": GiB}, {"cuda0": 2 * GiB}, {"cuda0": 9 * GiB}])
    last: dict[str, int] = {}

    def read() -> dict[str, int]:
        last.update(next(readings, last))
        return dict(last)

    assert asyncio.run(wait_until_free(read, {"cuda0": 8 * GiB}, timeout=30, interval=0))
    assert last == {"cuda0": 9 * GiB}
    assert not asyncio.run(wait_until_free(lambda: {"cuda0": 0}, {"cuda0": 1}, timeout=0, interval=0))


def test_measured_replaces_the_estimate_per_pool() -> None:
    estimate = Vector.of({HOST: 500, "cuda0": 3000, "cuda1": 2000, "cuda2": 100})
    measured = measured_vector(estimate, 400, {"cuda0": 1000, "cuda1": 1500}, {"cuda0": 2600, "cuda1": None})
    assert measured.as_dict() == {
        HOST: 400,  # RSS
        "cuda0": 2600,  # NVML's per-process figure
        "cuda1": 1500 + GPU_CONTEXT_BYTES,  # not visible: buffers + context
        "cuda2": 100,  # no figure at all: the estimate stays
    }
    assert measured_vector(estimate, None, {}, {})[HOST] == 500
