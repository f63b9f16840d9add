"""The GPUs as the scheduler sees them: pools with their budgets, where a model may go, the memory
an exited worker gave back that the driver does not show yet, and what a loaded worker measured.

Without GPUs (no NVML, no AMD sysfs) there is one pool, the host's, and a model needs exactly its
estimate there: the scheduler then behaves as it always did, and never reads an inventory again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.config import ModelEntry, Settings
from gateway.engine.base import DevicePlacement, Engine
from gateway.engine.loadlog import to_pools
from gateway.memory.facts import ModelFacts
from gateway.memory.footprint import measured_vector
from gateway.memory.inventory import Inventory, NoGpus, wait_until_free
from gateway.memory.options import model_options
from gateway.memory.planner import Option, Placement
from gateway.memory.pools import HOST, Device, PoolState, Vector, resolve_pools

log = logging.getLogger(__name__)
RETURN_LAG = 5.0  # how long memory an exited worker gave back may take to show as free (NVML: 0.5-5 s)
FREE_WAIT = 10.0  # the longest a load waits for it before starting anyway
SHOWN = 0.9  # share of the returned bytes that must show as free for the driver to have caught up


def worker_environment(placement: Placement, pools: Sequence[PoolState]) -> dict[str, str]:
    """Environment for the worker: it sees only its GPUs (by UUID, stable whatever the order)."""
    if not placement.on_gpu:  # a CPU model creates no GPU context (llama.cpp would otherwise use one)
        return {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
    by_name = {p.name: p for p in pools}
    ids = [by_name[d].uuid or d.removeprefix("cuda").removeprefix("rocm") for d in placement.devices]
    if placement.devices[0].startswith("rocm"):
        return {"HIP_VISIBLE_DEVICES": ",".join(ids)}
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}


def llama_arguments(placement: Placement) -> dict[str, object]:
    """The llama_cpp.Llama arguments for this placement (devices numbered as the worker sees them)."""
    if not placement.on_gpu:
        return {"n_gpu_layers": 0}
    arguments: dict[str, object] = {"n_gpu_layers": placement.n_gpu_layers, "main_gpu": 0}
    if len(placement.devices) > 1:
        arguments["tensor_split"] = list(placement.split or [1.0] * len(placement.devices))
    return arguments


@dataclass(frozen=True)
class _Returning:
    pool: str
    bytes: int
    free_before: int  # what the device reported before the worker exited
    until: float


class Devices:
    def __init__(self, inventory: Inventory | None, free_wait: float = FREE_WAIT, return_lag: float = RETURN_LAG):
        self._inventory = inventory or NoGpus()
        self.free_wait = free_wait
        self.return_lag = return_lag
        self.devices: tuple[Device, ...] = tuple(self._inventory.read())
        self._returning: list[_Returning] = []
        self._read_at = time.monotonic()

    @property
    def gpu(self) -> bool:
        return bool(self.devices)

    def cpu_only(self) -> None:
        """Stop budgeting GPUs (llama.cpp turned out unable to use them)."""
        self._inventory = NoGpus()
        self.devices = ()
        self._returning = []

    async def refresh(self, max_age: float = 0.0) -> None:
        """Read the devices again (off the event loop) unless the last reading is younger than
        `max_age` seconds; nothing to read on a CPU-only machine."""
        if self.gpu and time.monotonic() - self._read_at >= max_age:
            self.devices = tuple(await asyncio.to_thread(self._inventory.read))
            self._read_at = time.monotonic()
            self._settle()

    def _settle(self) -> None:
        now = time.monotonic()
        free = {d.name: d.free for d in self.devices}
        self._returning = [
            r for r in self._returning if now < r.until and free.get(r.pool, 0) < r.free_before + SHOWN * r.bytes
        ]

    def pools(self, settings: Settings, host_budget: int) -> tuple[PoolState, ...]:
        """Host first, then each GPU, with what it reports free plus what our exited workers gave
        back that it does not show yet."""
        host = PoolState(HOST, host_budget, description="host RAM")
        if not self.gpu:
            return (host,)
        gateway = settings.gateway
        gpus = resolve_pools(self.devices, gateway.budgets, None, 0, gateway.gpu_reserve)[1:]
        back: dict[str, int] = {}
        for entry in self._returning:
            back[entry.pool] = back.get(entry.pool, 0) + entry.bytes
        return (host, *(replace(p, free=(p.free or 0) + back.get(p.name, 0)) for p in gpus))

    def options(
        self, entry: ModelEntry, facts: ModelFacts, settings: Settings, pools: tuple[PoolState, ...], held: Vector
    ) -> list[Option]:
        """The ways to place a model, most preferred first (on the host only, without GPUs)."""
        if not self.gpu or entry.model.n_gpu_layers == 0:
            return [Option(Placement(), Vector.of({HOST: facts.estimate.total}))]
        return model_options(entry, facts, settings, pools, held)

    def returned(self, vector: Vector) -> None:
        """A worker holding `vector` exited: its GPU memory shows as free within `return_lag`."""
        free = {d.name: d.free for d in self.devices}
        until = time.monotonic() + self.return_lag
        for pool in vector.pools:
            if pool in free:
                self._returning.append(_Returning(pool, vector[pool], free[pool], until))

    async def wait_free(self, need: Vector, reserve: int, *, force: bool = False) -> bool:
        """Before a load: wait (bounded) until memory our exited workers gave back on its devices
        shows as free (`force`: whether or not we know of any). True when the devices have room for
        `need` now."""
        wanted = {p: need[p] + reserve for p in need.pools if p != HOST}
        if not wanted or not (force or any(r.pool in wanted for r in self._returning)):
            return True

        def read_free() -> dict[str, int]:
            return {d.name: d.free for d in self._inventory.read()}

        visible = await wait_until_free(read_free, wanted, self.free_wait)
        if not visible:
            log.warning("GPU memory %s not free after %.0fs; loading anyway", wanted, self.free_wait)
        await self.refresh()
        return visible

    def free_of(self, pool: str) -> int | None:
        return next((d.free for d in self.devices if d.name == pool), None)

    def worker_placement(self, placement: Placement, pools: tuple[PoolState, ...]) -> DevicePlacement | None:
        """The worker's environment and llama.cpp arguments; None on a CPU-only machine (as before)."""
        if not self.gpu:
            return None
        return DevicePlacement(worker_environment(placement, pools), llama_arguments(placement), placement.devices)

    def measure(self, engine: Engine, estimate: Vector) -> dict[str, int] | None:
        """What a loaded worker holds on each of its GPUs: NVML's per-process figure where the driver
        shows it, else llama.cpp's logged buffers plus a CUDA context."""
        placement = engine.placement
        if placement is None or not placement.devices:
            return None
        report = engine.memory_report()
        buffers = to_pools(report, list(placement.devices)) if report is not None else {}
        pid = engine.pid
        by_process: dict[str, int | None] = {}
        for device in self.devices:
            used = device.used_by([pid]) if pid is not None else None
            by_process[device.name] = used or None  # 0: our worker is not listed (another PID namespace)
        measured = measured_vector(estimate, None, buffers, by_process)
        return {p: n for p, n in measured.entries if p != HOST}
