"""Checks the per-device memory accounting on a real NVIDIA GPU (run through `scripts/gpu-check`).

Three synthetic models (f16 weights, no tokenizer: llama.cpp loads them, which is all this
needs) are loaded in turn on cuda0 under a small budget that holds two of them, placed and evicted
by the gateway's own planner, in real workers. NVML is the referee:
- our workers' use stays inside the budget after every load;
- the third load evicts by VRAM (the least recently used model on that device);
- memory comes back after an unload (visible within a bounded wait);
- the measured figure (llama.cpp's logged buffers plus the worker's CUDA context, calibrated on the
  first load) is within 5% of what NVML says each worker holds;
- the estimate's error per device is reported (goal: within 10%, never below).
Prints a JSON summary; exit code 0 when every check holds, 1 when one fails, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MiB = 2**20
TOLERANCE = 0.05
ESTIMATE_GOAL = 0.10
N_CTX = 2048
# (layers, embedding): f16 weights of about 0.6, 0.8 and 1.3 GiB
MODELS = {"small": (8, 1536), "medium": (12, 1536), "large": (12, 2048)}
VOCAB = 32000


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


def write_model(path: Path, layers: int, embedding: int) -> Path:
    """A llama-architecture GGUF with f16 weights and no vocabulary."""
    import gguf
    import numpy as np

    heads, heads_kv, ff = embedding // 128, max(1, embedding // 512), int(embedding * 2.75)
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in (
        (writer.add_block_count, layers),
        (writer.add_context_length, 4096),
        (writer.add_embedding_length, embedding),
        (writer.add_feed_forward_length, ff),
        (writer.add_head_count, heads),
        (writer.add_head_count_kv, heads_kv),
        (writer.add_rope_dimension_count, 128),
        (writer.add_layer_norm_rms_eps, 1e-5),
        (writer.add_file_type, gguf.LlamaFileType.MOSTLY_F16),
        (writer.add_tokenizer_model, "none"),
        (writer.add_vocab_size, VOCAB),
    ):
        add(value)

    def f16(*shape: int) -> Any:
        return np.zeros(shape, dtype=np.float16)  # never run: only the sizes matter, and zeros are quick

    kv = 128 * heads_kv
    writer.add_tensor("token_embd.weight", f16(VOCAB, embedding))
    writer.add_tensor("output_norm.weight", np.ones(embedding, dtype=np.float32))
    writer.add_tensor("output.weight", f16(VOCAB, embedding))
    for i in range(layers):
        for name, shape in (
            ("attn_q", (embedding, embedding)),
            ("attn_k", (kv, embedding)),
            ("attn_v", (kv, embedding)),
            ("attn_output", (embedding, embedding)),
            ("ffn_gate", (ff, embedding)),
            ("ffn_up", (ff, embedding)),
            ("ffn_down", (embedding, ff)),
        ):
            writer.add_tensor(f"blk.{i}.{name}.weight", f16(*shape))
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(embedding, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


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


async def run(order: list[str], directory: Path, models: dict[str, tuple[int, int]] = MODELS) -> Summary:
    from gateway.config import ModelEntry
    from gateway.engine.loadlog import to_pools
    from gateway.engine.process import ProcessEngine
    from gateway.footprint import Placement, footprint, llama_arguments, worker_environment
    from gateway.gguf_info import read_gguf_info
    from gateway.inventory import nvidia_devices, wait_until_free
    from gateway.placement import Option, Plan, Resident, plan_load
    from gateway.pools import PoolState, Vector

    devices = nvidia_devices()
    if not devices:
        raise SystemExit(2)
    device = devices[0]
    placement = Placement((device.name,), None, -1)
    infos = {name: read_gguf_info(write_model(directory / f"{name}.gguf", *shape)) for name, shape in models.items()}
    needs = {name: footprint(info, N_CTX, placement).vector for name, info in infos.items()}
    budget = choose_budget({name: need[device.name] for name, need in needs.items()})
    summary = Summary(device=f"{device.name} {device.description} {device.uuid}", budget=budget)
    summary.free_at_start = device.free
    engines: dict[str, tuple[ProcessEngine, Resident]] = {}
    held: dict[str, int] = {}  # NVML's figure per loaded model

    def free_now() -> dict[str, int]:
        return {d.name: d.free for d in nvidia_devices()}

    def pool() -> PoolState:
        now = next(d for d in nvidia_devices() if d.uuid == device.uuid)
        return PoolState(device.name, budget, now.total, now.free, 2**30, now.description, now.uuid)

    def ours(pids: list[int]) -> int | None:
        """NVML's figure for our workers; None when it lists none of them (per-process use hidden, or
        PIDs from another namespace inside a container)."""
        now = next(d for d in nvidia_devices() if d.uuid == device.uuid)
        return now.used_by(pids) or None

    def used_since_start() -> int:
        now = next(d for d in nvidia_devices() if d.uuid == device.uuid)
        return now.used - device.used

    for step, name in enumerate(order):
        pools = [PoolState("host", 2**40), pool()]
        residents = [resident for _, resident in engines.values()]
        option = Option(placement, needs[name])
        plan = plan_load([option], pools, residents)
        if not isinstance(plan, Plan):
            summary.failures.append(f"no room for {name}: {plan.describe()}")
            break
        for victim in plan.evict:
            engine, _ = engines.pop(victim)
            free_before = pool().free or 0
            await engine.stop()
            started = time.monotonic()
            wanted = {device.name: free_before + int(held.pop(victim, 0) * 0.9)}
            visible = await wait_until_free(free_now, wanted, timeout=15)
            summary.returned_after_unload.append(
                {"model": victim, "visible": visible, "waited": time.monotonic() - started}
            )
        entry = ModelEntry.model_validate({"model": {"path": str(infos[name].path), "n_ctx": N_CTX}})
        engine = ProcessEngine(
            name, entry, env=worker_environment(placement, pools), placement=llama_arguments(placement)
        )
        started = time.monotonic()
        await engine.start()
        seconds = time.monotonic() - started
        report = engine.load_report
        buffers = to_pools(report, list(placement.devices)).get(device.name, 0) if report else 0
        nvml = ours([engine.pid or -1])
        # Measured replaces estimated: NVML's figure for this worker (else the estimate).
        measured = Vector.of({device.name: nvml}) if nvml is not None else needs[name]
        engines[name] = (engine, Resident(name, measured, last_used=float(step)))
        if nvml is not None:
            held[name] = nvml
            if summary.context_bytes is None:
                summary.context_bytes = nvml - buffers  # the CUDA context: NVML's figure minus the buffers
        total = ours([e.pid or -1 for e, _ in engines.values()]) or used_since_start()
        need = needs[name][device.name]
        error = (need - nvml) / nvml if nvml else None
        summary.loads.append(Load(name, list(plan.evict), need, buffers, nvml, error, total, seconds))
    for engine, _ in engines.values():
        await engine.stop()
    await wait_until_free(free_now, {device.name: summary.free_at_start - 64 * MiB}, timeout=15)
    summary.free_at_end = free_now().get(device.name, 0)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write gpu-check.json here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        summary = asyncio.run(run(["small", "medium", "large", "small"], Path(directory)))
    summary.failures += judge(summary)
    text = json.dumps(asdict(summary), indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-check.json").write_text(text)
    return 1 if summary.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
