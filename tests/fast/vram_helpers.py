"""A scheduler over fake GPUs (a fake NVML) and fake workers (the real worker loop over the fake
llama.cpp) whose loads log scripted per-device buffers in llama.cpp's CUDA format and allocate them
on the fake devices, running out of memory where a real load would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.config import ModelEntry, parse_settings
from gateway.engine.process.handle import ProcessEngine
from gateway.memory.facts import inspect_models
from gateway.memory.inventory import SystemInventory
from gateway.scheduler import Scheduler, State
from gateway.testing.fakellama import FakeLlama, FakeScript
from gateway.testing.fakenvml import FakeDevice, FakeGpus
from gateway.testing.fakeworker import spawn_fake_worker

MiB = 2**20
GiB = 2**30
NO_SYSFS = Path("/nonexistent-sysfs")


def cuda_log(model: float, kv: float = 20.0, compute: float = 50.0, device: int = 0) -> tuple[str, ...]:
    """A load's buffer lines as llama.cpp logs them on CUDA (sizes in MiB)."""
    return (
        "load_tensors: offloaded 3/3 layers to GPU",
        f"load_tensors:        CUDA{device} model buffer size = {model:8.2f} MiB",
        "load_tensors:   CPU_Mapped model buffer size =     1.00 MiB",
        f"llama_kv_cache:      CUDA{device} KV buffer size = {kv:8.2f} MiB",
        f"sched_reserve:      CUDA{device} compute buffer size = {compute:8.2f} MiB",
        "sched_reserve:  CUDA_Host compute buffer size =     1.00 MiB",
    )


@dataclass
class Rig:
    scheduler: Scheduler
    gpus: FakeGpus
    spawns: list[tuple[str, dict[str, str] | None, dict[str, Any] | None]] = field(default_factory=list)
    free_at_spawn: list[dict[str, int]] = field(default_factory=list)
    backends: list[FakeLlama] = field(default_factory=list)

    def loaded(self) -> set[str]:
        return {v.model_id for v in self.scheduler.views() if v.state is State.LOADED}

    def pool(self, name: str) -> Any:
        return next(p for p in self.scheduler.snapshot().pools if p.name == name)

    def free(self) -> dict[str, int]:
        return {d.uuid: self.gpus.nvmlDeviceGetMemoryInfo(d).free for d in self.gpus.devices}


def gpus(*totals: int, lag: float = 0.0, processes_visible: bool = True) -> FakeGpus:
    devices = [FakeDevice(f"GPU-{i}", total) for i, total in enumerate(totals)]
    return FakeGpus(devices, lag=lag, processes_visible=processes_visible)


def rig(
    make_config: Any,
    tmp_path: Path,
    models: dict[str, dict[str, Any]],
    scripts: dict[str, FakeScript],
    fake: FakeGpus | None,
    gateway: dict[str, Any] | None = None,
    free_wait: float = 10.0,
) -> Rig:
    settings = parse_settings(make_config(models, gateway=gateway), tmp_path)
    facts = inspect_models(settings)
    holder: list[Rig] = []

    def factory(model_id: str, entry: ModelEntry) -> ProcessEngine:
        script = replace(scripts.get(model_id, FakeScript()), gpus=fake)
        made = holder[0]

        async def spawn() -> Any:
            made.spawns.append((model_id, engine.worker_env, engine._placement))
            if fake is not None:
                made.free_at_spawn.append(made.free())
            return await spawn_fake_worker(script, made.backends, engine.worker_env)

        engine = ProcessEngine(model_id, entry, spawn=spawn)
        return engine

    inventory = SystemInventory(nvml=fake, sysfs=NO_SYSFS) if fake is not None else None
    scheduler = Scheduler(settings, facts, factory, budget=64 * GiB, inventory=inventory, free_wait=free_wait)
    holder.append(Rig(scheduler, fake or gpus()))
    return holder[0]


async def use(scheduler: Scheduler, name: str) -> None:
    async with scheduler.hold(name, generate=False):
        pass


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Wait for an observable condition (a generous deadline, never a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)
