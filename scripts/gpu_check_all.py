"""The whole course of `scripts/gpu-check --all`: what a user about to trust the gateway with an H100
wants proven, each check with its figure. Every step runs through the gateway's own scheduler; a
`Kit` says what it runs on: the real GPU (NVML, real workers on a CUDA build, a helper process that
fills the device) or, for `--dry-run`, the fake NVML and fake workers (what the fast tests run).

Checks: preflight; a model that decodes, measured after load and after its first decode against
the estimate; a CPU model's worker absent from NVML and shown no device; the CUDA context measured
against the constant; an OOM at run time (the device filled after the load, before the first
decode) → `model_worker_crashed` naming the device, then the next request served; an OOM at load
(the device filled as the worker starts) → one eviction and one retry, then a 503
`device_out_of_memory` naming the device; the fallback when NVML lists no per-process figure, taken
on purpose; and the eviction course of scripts/gpu_check.py (budget by NVML at every step, the third
model evicts by VRAM, memory free again after unloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MiB = 2**20
N_CTX = 2048
DECODE_TOKENS = 8


@dataclass
class Check:
    name: str
    ok: bool
    figure: str  # one line for the table
    detail: dict[str, Any] = field(default_factory=dict)


class HiddenProcesses:
    """An inventory whose devices list no per-process figures (as under some sandboxes and drivers)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self) -> list[Any]:
        return [replace(d, processes=None) for d in self._inner.read()]


@dataclass
class Kit:
    """What the course runs on."""

    inventory: Any
    factory: Callable[[str, Any], Any]  # (model_id, entry) -> Engine
    fill: Callable[[int], None]  # a helper holds the device's memory but for this many bytes
    unfill: Callable[[], None]
    worker_env: Callable[[Any], dict[str, str] | None]  # what a worker was shown
    decode_model: Path  # a model with a vocabulary
    preflight: dict[str, Any] = field(default_factory=dict)
    on_spawn: list[Callable[[str], None]] = field(default_factory=list)  # hooks as a worker starts


def params() -> Any:
    from gateway.engine.base import GenerationParams

    return GenerationParams(
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=DECODE_TOKENS,
        temperature=0.0,
        top_p=1.0,
        top_k=40,
        min_p=0.0,
        repeat_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        stop=[],
        seed=7,
    )


@contextlib.asynccontextmanager
async def scheduler_for(
    kit: Kit, models: dict[str, dict[str, Any]], inventory: Any = None, free_wait: float = 10.0
) -> AsyncIterator[Any]:
    from gateway.config import parse_settings
    from gateway.memory.facts import inspect_models
    from gateway.memory.options import host_budget
    from gateway.scheduler import Scheduler

    document = {
        "gateway": {"gpu_reserve": 256 * MiB, "room_wait": 30, "spare_workers": 0},
        "models": {
            name: {"model": {"n_ctx": N_CTX, **model}, "runtime": {"thread_count": 1}} for name, model in models.items()
        },
    }
    settings = parse_settings(document, Path("."))

    def make(model_id: str, entry: Any) -> Any:
        for hook in kit.on_spawn:
            hook(model_id)
        return kit.factory(model_id, entry)

    await settle(kit)
    facts = inspect_models(settings)
    inventory = inventory or kit.inventory
    scheduler = Scheduler(settings, facts, make, host_budget(settings), inventory=inventory, free_wait=free_wait)
    try:
        yield scheduler
    finally:
        await scheduler.close()


def device_now(kit: Kit) -> Any:
    return kit.inventory.read()[0]


async def settle(kit: Kit) -> None:
    """Before each check: what the previous one's workers held shows free again (bounded)."""
    if "baseline" not in kit.preflight:
        kit.preflight["baseline"] = device_now(kit).used
    await until(lambda: device_now(kit).used <= kit.preflight["baseline"] + 64 * MiB, 15.0)


async def generate(scheduler: Any, name: str) -> int:
    """One short generation; the number of pieces it streamed."""
    pieces = 0
    async with scheduler.hold(name) as held:
        async for _ in held.engine.generate(params()):
            pieces += 1
    return pieces


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.05)
    return True


async def check_decode(kit: Kit) -> list[Check]:
    """A decoding model: memory after load, after the first decode, and the estimate; a CPU model's
    worker beside it absent from NVML and shown no device; the CUDA context against the constant."""
    from gateway.engine.loadlog import to_pools
    from gateway.memory.footprint import GPU_CONTEXT_BYTES

    gpu, cpu = {"path": str(kit.decode_model), "n_gpu_layers": -1}, {"path": str(kit.decode_model)}
    async with scheduler_for(kit, {"chat": gpu, "cpu": cpu}) as scheduler:
        estimate = scheduler.view("chat").pools.get("cuda0", 0)
        await scheduler.warm("chat")
        engine = scheduler._slots["chat"].engine
        after_load = device_now(kit).used_by([engine.pid]) or 0
        report = engine.memory_report()
        buffers = to_pools(report, ["cuda0"]).get("cuda0", 0) if report else 0
        pieces = await generate(scheduler, "chat")
        await until(lambda: scheduler._slots["chat"].decoded)
        await asyncio.sleep(0.5)  # the re-measurement reads the devices once more
        after_decode = device_now(kit).used_by([engine.pid]) or 0
        counted = scheduler.view("chat").pools.get("cuda0", 0)
        decode = Check(
            "decode",
            pieces > 0 and after_decode > 0 and counted >= after_decode,
            f"load {after_load / MiB:.0f} MiB, after decode {after_decode / MiB:.0f}, "
            f"estimate {estimate / MiB:.0f}, counted {counted / MiB:.0f}",
            {"pieces": pieces, "after_load": after_load, "after_decode": after_decode, "estimate": estimate,
             "counted": counted, "estimate_error": (estimate - after_decode) / after_decode if after_decode else None},
        )  # fmt: skip
        context = after_load - buffers
        constant = Check(
            "cuda_context",
            0 < context <= GPU_CONTEXT_BYTES,
            f"measured {context / MiB:.0f} MiB vs constant {GPU_CONTEXT_BYTES / MiB:.0f} MiB",
            {"measured": context, "constant": GPU_CONTEXT_BYTES, "buffers": buffers},
        )
        await scheduler.warm("cpu")
        cpu_engine = scheduler._slots["cpu"].engine
        listed = device_now(kit).used_by([cpu_engine.pid])
        env = kit.worker_env(cpu_engine) or {}
        shown = env.get("CUDA_VISIBLE_DEVICES")
        cpu_check = Check(
            "cpu_worker_off_the_gpu",
            listed == 0 and shown == "",
            f"NVML lists {listed} bytes for it; CUDA_VISIBLE_DEVICES={shown!r}",
            {"nvml": listed, "env": {k: v for k, v in env.items() if k.endswith("VISIBLE_DEVICES")}},
        )
    return [decode, constant, cpu_check]


async def check_runtime_oom(kit: Kit) -> Check:
    """The device filled after the load, before the first decode: the worker dies of it, the request
    gets `model_worker_crashed` naming the device, and once the memory is back the next is served."""
    from gateway.errors import GatewayError

    async with scheduler_for(kit, {"chat": {"path": str(kit.decode_model), "n_gpu_layers": -1}}) as scheduler:
        await scheduler.warm("chat")
        kit.fill(0)
        error: GatewayError | None = None
        try:
            await generate(scheduler, "chat")
        except GatewayError as exc:
            error = exc
        finally:
            kit.unfill()
        served = await generate(scheduler, "chat") if error is not None else 0
    code = error.code if error else None
    message = error.message if error else ""
    return Check(
        "oom_at_run_time",
        code == "model_worker_crashed" and "cuda0" in message and served > 0,
        f"{code}, names cuda0: {'cuda0' in message}; next request served: {served > 0}",
        {"code": code, "message": message[:300], "next_pieces": served},
    )


async def check_load_oom(kit: Kit) -> Check:
    """The device filled as the big model's worker starts: its load runs out of memory, the idle
    model on the device is evicted once and the load retried, then a 503 names the device."""
    from gateway.errors import GatewayError

    spawns: list[str] = []

    def fill_for_big(model_id: str) -> None:
        spawns.append(model_id)
        if model_id == "big":
            kit.fill(64 * MiB)

    models = {"idle": {"path": str(kit.decode_model), "n_gpu_layers": -1}}
    models["big"] = dict(models["idle"])
    kit.on_spawn.append(fill_for_big)
    error: GatewayError | None = None
    try:
        async with scheduler_for(kit, models, free_wait=2.0) as scheduler:
            await scheduler.warm("idle")
            try:
                await scheduler.warm("big")
            except GatewayError as exc:
                error = exc
            idle_state = scheduler.view("idle").state.value
    finally:
        kit.on_spawn.remove(fill_for_big)
        kit.unfill()
    code = error.code if error else None
    message = error.message if error else ""
    return Check(
        "oom_at_load",
        code == "device_out_of_memory"
        and error is not None
        and error.status == 503
        and "cuda0" in message
        and spawns.count("big") == 2
        and idle_state == "unloaded",
        f"{code} ({error.status if error else None}), tries {spawns.count('big')}, idle model {idle_state}",
        {"code": code, "message": message[:300], "spawns": spawns, "idle": idle_state},
    )


async def check_no_process_figures(kit: Kit) -> Check:
    """NVML lists no per-process figure (taken on purpose): the load still passes, measured as
    llama.cpp's buffers plus the context constant, never less than what the device shows used."""
    from gateway.engine.loadlog import to_pools
    from gateway.memory.footprint import GPU_CONTEXT_BYTES

    await settle(kit)
    before = device_now(kit).used
    hidden = HiddenProcesses(kit.inventory)
    async with scheduler_for(kit, {"chat": {"path": str(kit.decode_model), "n_gpu_layers": -1}}, hidden) as scheduler:
        await scheduler.warm("chat")
        engine = scheduler._slots["chat"].engine
        report = engine.memory_report()
        buffers = to_pools(report, ["cuda0"]).get("cuda0", 0) if report else 0
        measured = (scheduler.view("chat").measured_pools or {}).get("cuda0", 0)
        counted = scheduler.view("chat").pools.get("cuda0", 0)
        grew = device_now(kit).used - before
    return Check(
        "no_per_process_figures",
        measured == buffers + GPU_CONTEXT_BYTES and counted >= grew > 0,
        f"measured {measured / MiB:.0f} MiB (buffers + constant), device grew {grew / MiB:.0f} MiB",
        {"measured": measured, "buffers": buffers, "device_grew": grew, "counted": counted},
    )


async def course(kit: Kit) -> list[Check]:
    checks = [Check("preflight", bool(kit.preflight.get("ok")), kit.preflight.get("figure", ""), kit.preflight)]
    if not checks[0].ok:
        return checks
    checks += await check_decode(kit)
    checks.append(await check_runtime_oom(kit))
    checks.append(await check_load_oom(kit))
    checks.append(await check_no_process_figures(kit))
    return checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.figure}" for c in checks)


# -- the kits --------------------------------------------------------------------------------------


def dry_kit(directory: Path) -> Kit:
    """Fake GPUs (a fake NVML) and fake workers: each logs the buffers its estimate predicts in
    llama.cpp's CUDA format and allocates them on the fake device; its first decode takes 64 MiB more
    there (cuBLAS's workspace), and dies of a cuBLAS allocation failure when that is not free."""
    from gpu_check_parts import write_model

    from gateway.engine.process.handle import ProcessEngine
    from gateway.gguf.header import read_gguf_info
    from gateway.memory.footprint import footprint
    from gateway.memory.inventory import SystemInventory
    from gateway.memory.planner import Placement
    from gateway.testing.fakellama import FakeLlama, FakeScript
    from gateway.testing.fakenvml import FakeDevice, FakeGpus
    from gateway.testing.fakeworker import spawn_fake_worker

    device = FakeDevice("GPU-dry-run", 4 * 2**30)
    gpus = FakeGpus([device], lag=0.2, context_bytes=300 * MiB)
    backends: list[FakeLlama] = []

    def factory(model_id: str, entry: Any) -> Any:
        if entry.model.n_gpu_layers == 0:
            script = FakeScript()
        else:
            part = footprint(read_gguf_info(entry.model.path), entry.model.n_ctx, Placement(("cuda0",), None, -1))
            lines = (
                f"load_tensors:        CUDA0 model buffer size = {part.weights['cuda0'] / MiB:.2f} MiB",
                f"llama_kv_cache:      CUDA0 KV buffer size = {part.kv_cache['cuda0'] / MiB:.2f} MiB",
                f"sched_reserve:      CUDA0 compute buffer size = {part.compute['cuda0'] / MiB:.2f} MiB",
            )
            script = FakeScript(load_log=lines, gpus=gpus, decode_bytes=64 * MiB)
        engine = ProcessEngine(model_id, entry, spawn=lambda: spawn_fake_worker(script, backends, engine.worker_env))
        return engine

    def fill(keep: int) -> None:
        device.foreign = 0
        device.foreign = max(0, gpus.nvmlDeviceGetMemoryInfo(device).free - keep)

    def unfill() -> None:
        device.foreign = 0

    return Kit(
        inventory=SystemInventory(nvml=gpus, sysfs=Path("/nonexistent")),
        factory=factory,
        fill=fill,
        unfill=unfill,
        worker_env=lambda engine: engine.worker_env,
        decode_model=write_model(directory / "decode.gguf", 2, 256),
        preflight={"ok": True, "figure": "fake NVML, fake workers (dry run)", "dry_run": True},
    )


TORCH_CUDA_LIB = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib"  # the lent machines' (unconfirmed)
FILLER = """
import ctypes, sys
cudart = ctypes.CDLL(sys.argv[1])
free, total = ctypes.c_size_t(), ctypes.c_size_t()
assert cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0
want, pointer = max(0, free.value - int(sys.argv[2])), ctypes.c_void_p()
while want > 0 and cudart.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(want)) != 0:
    want -= 16 << 20
print(want, flush=True)
sys.stdin.read()
"""


def real_kit(decode_model: Path, cudart: str) -> Kit:
    """This machine's first NVIDIA GPU, real workers (a CUDA build of llama-cpp-python), and a helper
    process that fills the device with cudaMalloc (libcudart from the CUDA runtime wheel)."""
    import llama_cpp

    from gateway.engine.process.handle import ProcessEngine
    from gateway.memory.inventory import SystemInventory

    inventory = SystemInventory()
    filler: list[subprocess.Popen[str]] = []

    def fill(keep: int) -> None:
        unfill()
        helper = subprocess.Popen(
            [sys.executable, "-c", FILLER, cudart, str(keep)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert helper.stdout is not None
        helper.stdout.readline()  # allocated
        filler.append(helper)

    def unfill() -> None:
        while filler:
            helper = filler.pop()
            helper.kill()
            helper.wait()

    def worker_env(engine: Any) -> dict[str, str] | None:
        try:
            raw = Path(f"/proc/{engine.pid}/environ").read_bytes()
        except OSError:
            return engine.worker_env  # type: ignore[no-any-return]
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)

    devices = inventory.read()
    preflight: dict[str, Any] = {"devices": [f"{d.name} {d.description} {d.total // MiB} MiB" for d in devices]}
    preflight["offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    preflight["per_process_figures"] = bool(devices) and devices[0].processes is not None
    with contextlib.suppress(Exception):
        mig = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,mig.mode.current", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        preflight["driver_mig"] = mig.stdout.strip()
    preflight["ok"] = bool(devices) and preflight["offload"]
    preflight["figure"] = f"{preflight['devices'][:1]}, offload {preflight['offload']}, " + (
        f"per-process NVML {preflight['per_process_figures']}, {preflight.get('driver_mig', '')}"
    )
    return Kit(
        inventory=inventory,
        factory=lambda model_id, entry: ProcessEngine(model_id, entry),
        fill=fill,
        unfill=unfill,
        worker_env=worker_env,
        decode_model=decode_model,
        preflight=preflight,
    )


def default_cudart() -> str:
    """libcudart of the CUDA runtime wheel (on the lent machines beside torch), else the loader's."""
    for root in (
        os.environ.get("GPU_CHECK_CUDA_LIB", ""),
        "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib",
    ):
        for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
            if root and (Path(root) / name).exists():
                return str(Path(root) / name)
    return "libcudart.so"
