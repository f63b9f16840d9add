"""models.yaml + GGUF headers + the device inventory → the memory pools and their budgets, and each
model's placement options with what it needs in every pool."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import ModelEntry, Settings
from gateway.memory.estimate import (
    WORKER_BASELINE_BYTES,
    after_load_bytes,
    cache_types,
    draft_estimate,
    kv_cells,
    output_rows,
    ubatch,
)
from gateway.memory.facts import ModelFacts
from gateway.memory.footprint import footprint
from gateway.memory.hostmem import host_memory_total
from gateway.memory.planner import ModelPlacementConfig, Option, Placement, placement_options
from gateway.memory.pools import HOST, Device, PoolState, Vector, resolve_pools


def pools_for(settings: Settings, devices: Sequence[Device], host_total: int) -> tuple[PoolState, ...]:
    gateway = settings.gateway
    return resolve_pools(devices, gateway.budgets, gateway.memory_budget, host_total, gateway.gpu_reserve)


def host_budget(settings: Settings) -> int:
    """The host pool's budget on this machine: gateway.budgets.host, else memory_budget, else 80% of
    the memory this process may use (physical, or a cgroup's limit below it)."""
    return pools_for(settings, (), host_memory_total())[0].budget


def placement_config(entry: ModelEntry, settings: Settings) -> ModelPlacementConfig:
    model = entry.model
    return ModelPlacementConfig(
        n_gpu_layers=model.n_gpu_layers,
        devices=tuple(model.devices) if model.devices is not None else None,
        main_gpu=model.main_gpu,
        tensor_split=tuple(model.tensor_split) if model.tensor_split is not None else None,
        policy=model.placement or settings.gateway.placement,
    )


def projector_need(entry: ModelEntry, facts: ModelFacts, placement: Placement) -> Vector:
    """model.mmproj's weights where libmtmd puts them (the first GPU the worker sees, when the model
    offloads; else the host), and the encoded-image cache in the worker's own memory."""
    if facts.projector is None:
        return Vector()
    pool = placement.devices[0] if placement.on_gpu else HOST
    return Vector.of({pool: facts.projector.tensor_bytes}) + Vector.of({HOST: entry.model.image_cache})


def model_options(
    entry: ModelEntry, facts: ModelFacts, settings: Settings, pools: Sequence[PoolState], held: Vector
) -> list[Option]:
    batch = after_load_bytes(facts.info, entry)

    def need_of(placement: Placement) -> Vector:
        cells, rows = kv_cells(entry), output_rows(entry)
        need = footprint(facts.info, cells, placement, ubatch(entry), rows, batch, cache_types(entry)).vector
        return need + draft_need(entry, facts, placement) + projector_need(entry, facts, placement)

    return placement_options(placement_config(entry, settings), pools, held, need_of)


def draft_need(entry: ModelEntry, facts: ModelFacts, placement: Placement) -> Vector:
    """What a speculative draft model adds per pool: on the host, or its offloaded layers on the first
    GPU of the target's placement (llama.cpp's main GPU in the worker)."""
    speculative = entry.model.speculative
    if facts.draft is None or speculative is None or speculative.draft is None:
        return Vector()
    layers = speculative.draft.n_gpu_layers
    if not placement.on_gpu or layers == 0:
        return Vector.of({HOST: draft_estimate(facts.draft, entry).total})
    on_gpu = Placement(devices=placement.devices[:1], n_gpu_layers=layers)
    need = footprint(facts.draft, kv_cells(entry), on_gpu, ubatch(entry)).vector
    return need + Vector.of({HOST: -WORKER_BASELINE_BYTES})
