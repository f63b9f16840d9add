"""models.yaml + GGUF headers + the device inventory → pools, placement options, and the plan that
`gateway check` prints (what goes where, what fits together)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.config import ModelEntry, Settings
from gateway.footprint import Placement, footprint
from gateway.memory import ModelFacts, after_load_bytes, kv_cells, output_rows, ubatch
from gateway.placement import ModelPlacementConfig, NoRoom, Option, Plan, Resident, placement_options, plan_load
from gateway.pools import Device, PoolState, Vector, resolve_pools
from gateway.units import format_bytes


def pools_for(settings: Settings, devices: Sequence[Device], host_total: int) -> tuple[PoolState, ...]:
    gateway = settings.gateway
    return resolve_pools(devices, gateway.budgets, gateway.memory_budget, host_total, gateway.gpu_reserve)


def placement_config(entry: ModelEntry, settings: Settings) -> ModelPlacementConfig:
    model = entry.model
    return ModelPlacementConfig(
        n_gpu_layers=model.n_gpu_layers,
        devices=tuple(model.devices) if model.devices is not None else None,
        main_gpu=model.main_gpu,
        tensor_split=tuple(model.tensor_split) if model.tensor_split is not None else None,
        policy=model.placement or settings.gateway.placement,
    )


def model_options(
    entry: ModelEntry, facts: ModelFacts, settings: Settings, pools: Sequence[PoolState], held: Vector
) -> list[Option]:
    batch = after_load_bytes(facts.info, entry)

    def need_of(placement: Placement) -> Vector:
        return footprint(facts.info, kv_cells(entry), placement, ubatch(entry), output_rows(entry), batch).vector

    return placement_options(placement_config(entry, settings), pools, held, need_of)


def _vector_text(vector: Vector) -> str:
    return ", ".join(f"{pool} {format_bytes(size)}" for pool, size in vector.entries) or "nothing"


def plan_alone(
    model_id: str, settings: Settings, facts: dict[str, ModelFacts], pools: Sequence[PoolState]
) -> Plan | NoRoom:
    entry = settings.models[model_id]
    return plan_load(model_options(entry, facts[model_id], settings, pools, Vector()), pools, [])


def fits_with(
    first: str, second: str, settings: Settings, facts: dict[str, ModelFacts], pools: Sequence[PoolState]
) -> bool:
    """Whether `second` loads without evicting anything while `first` is loaded."""
    alone = plan_alone(first, settings, facts, pools)
    if not isinstance(alone, Plan):
        return False
    residents = [Resident(first, alone.option.need, busy=True)]
    pools = _as_if_loaded(pools, alone.option.need)
    options = model_options(settings.models[second], facts[second], settings, pools, alone.option.need)
    together = plan_load(options, pools, residents, settings.gateway.max_loaded)
    return isinstance(together, Plan) and not together.evict


def describe_pools(pools: Sequence[PoolState]) -> list[str]:
    lines = []
    for pool in pools:
        if not pool.is_gpu:
            lines.append(f"  {pool.name}: budget {format_bytes(pool.budget)}")
            continue
        lines.append(
            f"  {pool.name}: {pool.description} {pool.uuid or ''}, {format_bytes(pool.total or 0)} total, "
            f"{format_bytes(pool.free or 0)} free, budget {format_bytes(pool.budget)}, "
            f"reserve {format_bytes(pool.reserve)}"
        )
    return lines


def describe_plan(
    settings: Settings, facts: dict[str, ModelFacts], pools: Sequence[PoolState]
) -> tuple[list[str], list[str]]:
    """Lines for `gateway check`: each model alone (where it goes, what it needs per pool), then
    which models load together without evicting each other; and the problems found."""
    lines, problems = ["plan (each model alone):"], []
    for model_id in settings.models:
        plan = plan_alone(model_id, settings, facts, pools)
        if isinstance(plan, Plan):
            lines.append(f"  {model_id}: {plan.option.placement.describe()}: {_vector_text(plan.option.need)}")
        elif plan.never:
            problems.append(f"{model_id} can never fit: {plan.describe()}")
            lines.append(f"  {model_id}: can never fit ({plan.describe()})")
        else:
            lines.append(f"  {model_id}: no room now ({plan.describe()})")
    ids = list(settings.models)
    partners = {m: [o for o in ids if o != m and fits_with(m, o, settings, facts, pools)] for m in ids}
    if all(len(p) == len(ids) - 1 for p in partners.values()):
        cap = settings.gateway.max_loaded
        if _all_fit(settings, facts, pools, cap):
            lines.append("all models fit together")
            return lines, problems
        if cap is not None and _all_fit(settings, facts, pools, None):  # memory is not what stops them
            lines.append(f"all models fit together in memory, but max_loaded: {cap} keeps at most {cap} loaded at once")
            return lines, problems
    lines.append("not all models fit together; each fits together with:")
    lines += [f"  {m}: {', '.join(p) if p else 'none (alone only)'}" for m, p in partners.items()]
    return lines, problems


def _all_fit(
    settings: Settings, facts: dict[str, ModelFacts], pools: Sequence[PoolState], max_loaded: int | None
) -> bool:
    residents: list[Resident] = []
    held = Vector()
    for model_id, entry in settings.models.items():
        loaded = _as_if_loaded(pools, held)
        options = model_options(entry, facts[model_id], settings, loaded, held)
        plan = plan_load(options, loaded, residents, max_loaded)
        if not isinstance(plan, Plan) or plan.evict:
            return False
        residents.append(Resident(model_id, plan.option.need, busy=True))
        held = held + plan.option.need
    return True


def _as_if_loaded(pools: Sequence[PoolState], held: Vector) -> tuple[PoolState, ...]:
    """The pools as the devices would report them with `held` loaded (a live device's free memory
    already excludes what our loaded models use; a simulated load must take it off)."""
    return tuple(replace(p, free=p.free - held[p.name]) if p.free is not None else p for p in pools)
