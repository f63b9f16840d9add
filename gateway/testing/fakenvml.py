"""A fake of NVIDIA GPUs for tests and dry runs: `pynvml`'s functions over devices whose memory fake
workers allocate and give back, with other processes' use and the driver's lag in showing memory
that an exited process returned (0.5-5 s on real hardware).

`inventory.SystemInventory(nvml=FakeGpus(...))` reads it as it would read NVML; a fake worker
(`fakeworker.py`) allocates on the devices its `CUDA_VISIBLE_DEVICES` names what its
scripted llama.cpp log lines say, and runs out of memory where a real one would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


@dataclass
class Memory:
    total: int
    free: int
    used: int


@dataclass
class Process:
    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeDevice:
    uuid: str
    total: int
    foreign: int = 0  # bytes other processes hold
    name: str = "NVIDIA Fake GPU"
    processes_visible: bool = True  # whether NVML lists this device's processes (not on every driver)


@dataclass
class FakeGpus:
    """Devices in NVML's order; `lag`: seconds before memory a process freed shows as free."""

    devices: list[FakeDevice]
    lag: float = 0.0
    processes_visible: bool = True
    library: bool = True
    context_bytes: int = 300 * 2**20  # what a worker's CUDA context takes beyond its buffers
    allocations: dict[tuple[int, str], int] = field(default_factory=dict)  # (pid, uuid) -> bytes
    returning: list[tuple[str, int, float]] = field(default_factory=list)  # (uuid, bytes, visible at)
    peak_used: dict[str, int] = field(default_factory=dict)  # uuid -> most our processes held at once
    initialised: int = 0  # nvmlInit calls not yet shut down
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what fake workers do ----------------------------------------------------------------------

    def allocate(self, pid: int, uuid: str, size: int) -> int | None:
        """Take `size` bytes for `pid`, after its CUDA context on first use; None when it fits, else
        the bytes that were free (the context stays allocated, as in a real process, until it exits)."""
        with self._lock:
            device = self._device(uuid)
            if (pid, uuid) not in self.allocations:
                if self.context_bytes > self._free(device):
                    return self._free(device)
                self.allocations[(pid, uuid)] = self.context_bytes
            free = self._free(device)
            if size > free:
                return free
            self.allocations[(pid, uuid)] += size
            ours = sum(n for (_, u), n in self.allocations.items() if u == uuid)
            self.peak_used[uuid] = max(self.peak_used.get(uuid, 0), ours)
            return None

    def release(self, pid: int) -> None:
        """The process exited: its memory shows as free `lag` seconds from now."""
        with self._lock:
            visible_at = time.monotonic() + self.lag
            for key in [k for k in self.allocations if k[0] == pid]:
                self.returning.append((key[1], self.allocations.pop(key), visible_at))

    def held_by(self, pid: int) -> dict[str, int]:
        with self._lock:
            return {u: n for (p, u), n in self.allocations.items() if p == pid}

    # -- pynvml ------------------------------------------------------------------------------------

    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound

    def nvmlInit(self) -> None:
        if not self.library:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeDevice) -> bytes:
        return handle.name.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> Memory:
        with self._lock:
            free = self._free(handle)
        return Memory(handle.total, free, handle.total - free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[Process]:
        if not (self.processes_visible and handle.processes_visible):
            raise NVMLError_NotSupported("Not Supported")
        with self._lock:
            return [Process(pid, size) for (pid, uuid), size in self.allocations.items() if uuid == handle.uuid]

    # -- helpers -----------------------------------------------------------------------------------

    def _device(self, uuid: str) -> FakeDevice:
        return next(d for d in self.devices if d.uuid == uuid)

    def _free(self, device: FakeDevice) -> int:
        now = time.monotonic()
        self.returning = [r for r in self.returning if r[2] > now]
        ours = sum(n for (_, uuid), n in self.allocations.items() if uuid == device.uuid)
        lagging = sum(n for uuid, n, _ in self.returning if uuid == device.uuid)
        return max(0, device.total - device.foreign - ours - lagging)
