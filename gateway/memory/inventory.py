"""The GPUs of this machine and their memory, read without initialising a GPU backend.

NVIDIA devices come from NVML (`nvidia-ml-py`, imported only when asked): total/free/used per device
by UUID and, where the driver shows them, other processes' use. Creating a CUDA context to ask
(`ggml_backend_dev_memory`, `torch.cuda`) would cost hundreds of MiB on every device, so the gateway
process never does. AMD devices come from sysfs (`mem_info_vram_total`/`_used`). No library and
no devices mean an empty inventory: the gateway then runs CPU-only, exactly as without pools.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from gateway.memory.pools import Device

log = logging.getLogger(__name__)
SYSFS_DRM = Path("/sys/class/drm")


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def nvidia_devices(nvml: Any = None) -> list[Device]:
    """NVIDIA GPUs as `cuda0, cuda1, ...` in NVML's order; [] when NVML or its library is missing.

    `nvml` is the `pynvml` module (from nvidia-ml-py) or a stand-in with the same functions."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded...: no NVIDIA GPU here
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        return [_nvidia_device(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as exc:
        log.warning("NVML failed while listing GPUs (%s): treating this machine as CPU-only", exc)
        return []
    finally:
        nvml.nvmlShutdown()


def _nvidia_device(nvml: Any, index: int) -> Device:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        processes: tuple[tuple[int, int], ...] | None = tuple(
            (int(p.pid), int(p.usedGpuMemory or 0)) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        )
    except nvml.NVMLError:  # not supported, or not permitted (containers without the host PID namespace)
        processes = None
    return Device(
        name=f"cuda{index}",
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        index=index,
        description=_text(nvml.nvmlDeviceGetName(handle)),
        total=int(memory.total),
        free=int(memory.free),
        used=int(memory.used),
        processes=processes,
    )


def amd_devices(root: Path = SYSFS_DRM) -> list[Device]:
    """AMD GPUs (amdgpu driver) as `rocm0, rocm1, ...` from sysfs; per-process use is not visible."""
    devices: list[Device] = []
    cards = sorted(
        (p for p in root.glob("card[0-9]*") if p.name[4:].isdigit()),
        key=lambda p: int(p.name[4:]),
    )
    for card in cards:
        total_file = card / "device" / "mem_info_vram_total"
        used_file = card / "device" / "mem_info_vram_used"
        try:
            total, used = int(total_file.read_text()), int(used_file.read_text())
        except (OSError, ValueError):
            continue
        unique = card / "device" / "unique_id"
        uuid = unique.read_text().strip() if unique.is_file() else card.name
        index = len(devices)
        devices.append(Device(f"rocm{index}", uuid, index, f"AMD GPU ({card.name})", total, total - used, used))
    return devices


def read_devices(nvml: Any = None, sysfs: Path = SYSFS_DRM) -> list[Device]:
    """Every GPU this machine has, NVIDIA first; [] on a CPU-only machine."""
    return nvidia_devices(nvml) + amd_devices(sysfs)


class Inventory(Protocol):
    """Where the scheduler reads the GPUs from (the machine's, or a fake NVML in tests)."""

    def read(self) -> list[Device]: ...


class SystemInventory:
    """This machine's GPUs: NVML (or the given stand-in for pynvml), then AMD's sysfs."""

    def __init__(self, nvml: Any = None, sysfs: Path = SYSFS_DRM) -> None:
        self._nvml = nvml
        self._sysfs = sysfs

    def read(self) -> list[Device]:
        return read_devices(self._nvml, self._sysfs)


class NoGpus:
    """A CPU-only machine (and the default where no inventory is given)."""

    def read(self) -> list[Device]:
        return []


async def wait_until_free(
    read_free: Callable[[], Mapping[str, int]],
    wanted: Mapping[str, int],
    timeout: float,
    interval: float = 0.1,
) -> bool:
    """Wait until each named device reports at least `wanted` bytes free (memory a worker returned at
    exit shows as free only 0.5-5 s later); False when `timeout` passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        free = await asyncio.to_thread(read_free)
        if all(free.get(device, 0) >= need for device, need in wanted.items()):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
