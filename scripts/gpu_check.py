"""Checks the per-device memory accounting on a real NVIDIA GPU (run through `scripts/gpu-check`).

Three synthetic models (f16 weights, no tokenizer: llama.cpp loads them, which is all this
needs) are loaded in turn on cuda0 under a small `gateway.budgets.cuda0` that holds two of them,
through the gateway's own scheduler (its inventory, placement, eviction and measurement) with real
workers. NVML is the referee:
- our workers' use stays inside the budget after every load;
- the third load evicts by VRAM (the least recently used model on that device);
- memory comes back after an unload (visible within a bounded wait);
- the measured figure (llama.cpp's logged buffers plus the worker's CUDA context, calibrated on the
  first load) is within 5% of what NVML says each worker holds, and the scheduler's figure (the
  larger of estimate and measurement) is never below it;
- the estimate's error per device is reported (goal: within 10%, never below).
`--dry-run` runs the same course without a GPU or llama.cpp: fake GPUs (a fake NVML) and fake
workers that log the CUDA buffers the estimate predicts. Prints a JSON summary; exit code 0 when
every check holds, 1 when one fails, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from gpu_check_parts import VOCAB, dry_run_parts, write_model  # noqa: E402, F401 (VOCAB, write_model: for tests)

MiB = 2**20
DECODE_MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf"  # has a vocabulary: it decodes
TOLERANCE = 0.05
ESTIMATE_GOAL = 0.10
N_CTX = 2048
# (layers, embedding): f16 weights of about 0.6, 0.8 and 1.3 GiB
MODELS = {"small": (8, 1536), "medium": (12, 1536), "large": (12, 2048)}
TINY = {"small": (2, 256), "medium": (3, 256), "large": (4, 256)}  # the dry run's
ORDER = ["small", "medium", "large", "small"]


@dataclass
class Load:
    model: str
    evicted: list[str]
    need: int  # estimate on the device
    buffers: int  # llama.cpp's logged buffers on the device
    nvml: int | None  # NVML's figure for the worker
    estimate_error: float | None  # (estimate - NVML) / NVML
    ours_total: int | None  # NVML: all our workers together, after this load
    seconds: float
    scheduler: int = 0  # what the scheduler counts the model as holding on the device, once loaded


@dataclass
class Summary:
    device: str
    budget: int
    context_bytes: int | None = None
    loads: list[Load] = field(default_factory=list)
    returned_after_unload: list[dict[str, Any]] = field(default_factory=list)
    free_at_start: int = 0
    free_at_end: int = 0
    failures: list[str] = field(default_factory=list)
    dry_run: bool = False


def choose_budget(needs: dict[str, int]) -> int:
    """Room for the two largest together, never for all three."""
    sizes = sorted(needs.values())
    budget = sizes[-1] + sizes[-2] + 64 * MiB
    assert budget < sum(sizes), "the models must not all fit"
    return budget


def within(measured: int, reference: int, tolerance: float = TOLERANCE) -> bool:
    return reference > 0 and abs(measured - reference) <= tolerance * reference


def judge(summary: Summary) -> list[str]:
    """The checks over what was recorded."""
    failures = []
    for load in summary.loads:
        if load.ours_total is not None and load.ours_total > summary.budget:
            failures.append(f"after loading {load.model}: our workers hold {load.ours_total} > budget {summary.budget}")
        if load.nvml is None:
            failures.append(f"{load.model}: NVML shows no per-process figure for the worker")
            continue
        if summary.context_bytes is not None and not within(load.buffers + summary.context_bytes, load.nvml):
            failures.append(
                f"{load.model}: measured {load.buffers + summary.context_bytes} vs NVML {load.nvml} (over 5% apart)"
            )
        if load.scheduler and load.scheduler < load.nvml:
            failures.append(f"{load.model}: the scheduler counts {load.scheduler}, below NVML's {load.nvml}")
        if load.need < load.nvml:
            failures.append(f"{load.model}: estimate {load.need} below NVML {load.nvml} (not conservative)")
    evictions = [load.evicted for load in summary.loads]
    if not any(evictions):
        failures.append("no load evicted anything: the budget did not force eviction by VRAM")
    for entry in summary.returned_after_unload:
        if not entry["visible"]:
            failures.append(f"memory of {entry['model']} not seen free again within {entry['waited']:.1f}s")
    if summary.free_at_end < summary.free_at_start - 64 * MiB:
        failures.append(f"free memory {summary.free_at_end} after unloading all, {summary.free_at_start} before")
    return failures


Factory = Callable[[str, Any], Any]


def settings_for(paths: dict[str, Path], device: str, budget: int) -> Any:
    from gateway.config import parse_settings

    document = {
        "gateway": {"budgets": {device: budget}, "gpu_reserve": 256 * MiB, "room_wait": 60, "spare_workers": 0},
        "models": {
            name: {
                "model": {"path": str(path), "n_ctx": N_CTX, "n_gpu_layers": -1, "devices": [device]},
                "runtime": {"thread_count": 1},
            }
            for name, path in paths.items()
        },
    }
    return parse_settings(document, Path("."))


async def run(
    order: list[str],
    directory: Path,
    models: dict[str, tuple[int, int]] = MODELS,
    inventory: Any = None,
    factory: Factory | None = None,
) -> Summary:
    """Load `order` through the scheduler under a budget for two models, then unload them all."""
    from gateway.engine.loadlog import to_pools
    from gateway.engine.process.handle import ProcessEngine
    from gateway.gguf.header import read_gguf_info
    from gateway.memory.facts import inspect_models
    from gateway.memory.footprint import footprint
    from gateway.memory.inventory import SystemInventory, wait_until_free
    from gateway.memory.options import host_budget
    from gateway.memory.planner import Placement
    from gateway.scheduler import Scheduler, State

    inventory = inventory or SystemInventory()
    devices = inventory.read()
    if not devices:
        raise SystemExit(2)
    device = devices[0]
    name_of = device.name
    paths = {name: write_model(directory / f"{name}.gguf", *shape) for name, shape in models.items()}
    placement = Placement((name_of,), None, -1)
    needs = {n: footprint(read_gguf_info(p), N_CTX, placement).vector[name_of] for n, p in paths.items()}
    budget = choose_budget(needs)
    settings = settings_for(paths, name_of, budget)
    engines: dict[str, Any] = {}

    def make(model_id: str, entry: Any) -> Any:
        engine = (factory or (lambda m, e: ProcessEngine(m, e)))(model_id, entry)
        engines[model_id] = engine
        return engine

    scheduler = Scheduler(settings, inspect_models(settings), make, budget=host_budget(settings), inventory=inventory)
    summary = Summary(device=f"{name_of} {device.description} {device.uuid}", budget=budget)
    summary.free_at_start = device.free

    def now() -> Any:
        return next(d for d in inventory.read() if d.uuid == device.uuid)

    def free_now() -> dict[str, int]:
        return {name_of: now().free}

    def loaded() -> set[str]:
        return {v.model_id for v in scheduler.views() if v.state is State.LOADED}

    held: dict[str, int] = {}  # NVML's figure per loaded model
    try:
        for name in order:
            before = loaded()
            need = needs[name]  # the estimate on the device (as the scheduler plans with it)
            started = time.monotonic()
            await scheduler.warm(name)
            seconds = time.monotonic() - started
            engine = engines[name]
            report = engine.memory_report()
            buffers = to_pools(report, [name_of]).get(name_of, 0) if report else 0
            nvml = now().used_by([engine.pid or -1]) or None
            if nvml is not None:
                held[name] = nvml
                if summary.context_bytes is None:
                    summary.context_bytes = nvml - buffers  # the CUDA context: NVML's figure minus the buffers
            live = [e.pid or -1 for m, e in engines.items() if m in loaded()]
            total = now().used_by(live) or None
            error = (need - nvml) / nvml if nvml else None
            measured = scheduler.view(name).pools.get(name_of, 0)
            evicted = sorted(before - loaded() - {name})
            summary.loads.append(Load(name, evicted, need, buffers, nvml, error, total, seconds, measured))
        for name in sorted(loaded()):
            free_before = now().free
            started = time.monotonic()
            await scheduler.unload(name)
            wanted = {name_of: free_before + int(held.get(name, 0) * 0.9)}
            visible = await wait_until_free(free_now, wanted, timeout=15)
            summary.returned_after_unload.append(
                {"model": name, "visible": visible, "waited": time.monotonic() - started}
            )
    finally:
        await scheduler.close()
    await wait_until_free(free_now, {name_of: summary.free_at_start - 64 * MiB}, timeout=15)
    summary.free_at_end = free_now()[name_of]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write gpu-check.json here")
    parser.add_argument("--dry-run", action="store_true", help="fake GPUs and fake workers: no GPU, no llama.cpp")
    parser.add_argument("--all", action="store_true", help="the whole course (gpu_check_all.py), then this one")
    parser.add_argument("--model", type=Path, default=DECODE_MODEL, help="--all: a model that decodes")
    args = parser.parse_args(argv)
    checks: list[Any] = []
    with tempfile.TemporaryDirectory() as directory:
        if args.all:
            import gpu_check_all

            kit = gpu_check_all.dry_kit(Path(directory)) if args.dry_run else None
            kit = kit or gpu_check_all.real_kit(args.model, gpu_check_all.default_cudart())
            checks = asyncio.run(gpu_check_all.course(kit))
            if not checks[0].ok:  # no GPU, or a build that cannot offload: say what preflight saw
                text = json.dumps({"checks": [asdict(c) for c in checks], "failures": ["preflight"]}, indent=2)
                print(text)
                print(gpu_check_all.table(checks), file=sys.stderr)
                if args.out is not None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "gpu-check.json").write_text(text)
                return 2
        if args.dry_run:
            inventory, factory = dry_run_parts(N_CTX)
            summary = asyncio.run(run(ORDER, Path(directory), TINY, inventory, factory))
            summary.dry_run = True
        else:
            summary = asyncio.run(run(ORDER, Path(directory)))
    summary.failures += judge(summary)
    document: dict[str, Any] = asdict(summary)
    if args.all:
        summary.failures += [f"{c.name}: {c.figure}" for c in checks if not c.ok]
        document = {"checks": [asdict(c) for c in checks], "eviction_course": document, "failures": summary.failures}
    text = json.dumps(document, indent=2)
    print(text)
    if args.all:
        import gpu_check_all

        course = gpu_check_all.Check("eviction_course", not judge(summary), course_figure(summary))
        print(gpu_check_all.table([*checks, course]), file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-check.json").write_text(text)
    return 1 if summary.failures else 0


def course_figure(summary: Summary) -> str:
    peak = max((load.ours_total or 0 for load in summary.loads), default=0)
    evicted = [e for load in summary.loads for e in load.evicted]
    return f"peak {peak / MiB:.0f} of {summary.budget / MiB:.0f} MiB by NVML, evicted {evicted}"


if __name__ == "__main__":
    raise SystemExit(main())
