"""`gateway check`: the configuration validated, each model's file, template and memory estimate, the
memory pools, where each model goes alone and what it needs per pool, and which models load together
without evicting each other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.config import Settings
from gateway.config.model import sample_render_error
from gateway.config.units import format_bytes
from gateway.engine.reasoning import describe
from gateway.memory.facts import ModelFacts, inspect_models
from gateway.memory.hostmem import host_memory_total
from gateway.memory.inventory import read_devices
from gateway.memory.options import model_options, pools_for
from gateway.memory.planner import LoadPlan, NoRoom, Resident, plan_load
from gateway.memory.pools import PoolState, Vector, unknown_budget_names


def check(settings: Settings, measure: bool) -> int:
    """Validate the configuration and report what each model needs where; exit 1 on any problem."""

    from gateway.engine.worker.load import backend_info  # imports llama_cpp: only for this command

    facts = inspect_models(settings)
    backend = backend_info()
    offload = "supported" if backend["gpu_offload"] else "not supported"
    print(f"llama.cpp backend: {backend['backend']} (GPU offload {offload})")
    devices = read_devices()
    if devices and not backend["gpu_offload"]:
        print(f"  warning: {len(devices)} GPU(s) found, but this llama.cpp build cannot use them: planning for the CPU")
        devices = []
    pools = pools_for(settings, devices, host_memory_total())
    print(f"memory budget: {format_bytes(pools[0].budget)}, max_loaded: {settings.gateway.max_loaded or 'no limit'}")
    print("memory pools:")
    print("\n".join(describe_pools(pools)))
    for name in unknown_budget_names(settings.gateway.budgets, devices):
        print(f"  warning: gateway.budgets.{name} names no GPU on this machine")
    for model_id, fact in facts.items():
        print(_describe(model_id, settings, fact))
        entry = settings.models[model_id]
        if entry.model.n_gpu_layers != 0 and not backend["gpu_offload"]:
            print(
                f"  warning: {model_id} asks for GPU offload (n_gpu_layers={entry.model.n_gpu_layers}) but this "
                "llama.cpp build cannot offload; it will run on the CPU"
            )
        missing = [d for d in entry.model.devices or [] if d not in {p.name for p in pools} | {p.uuid for p in pools}]
        if missing and devices:
            print(f"  warning: {model_id}.model.devices names {missing}, not on this machine")
        if entry.model.chat_template is not None:
            trouble = sample_render_error(entry.model.chat_template)
            if trouble:
                print(f"  warning: {model_id}'s chat template fails on a one-message chat: {trouble}")
        elif not fact.has_chat_template and not entry.model.chat_format:
            print(f"  warning: {model_id} has no chat template: chat requests will be refused")
    for model_id, remote in settings.upstreams.items():
        servers = ", ".join(f"{u.base_url} ({u.model or model_id})" for u in remote.upstream)
        print(f"{model_id}: served by {servers}; no memory budget applies")
    lines, problems = describe_plan(settings, facts, pools)
    print("\n".join(lines))
    for problem in problems:
        print(f"  problem: {problem}")
    if measure and not problems:
        from gateway.cli.measure import measure_models

        print("\n".join(measure_models(settings, facts, pools[0].budget)))
    return 1 if problems else 0


def _describe(model_id: str, settings: Settings, fact: ModelFacts) -> str:
    entry = settings.models[model_id]
    info, est = fact.info, fact.estimate
    template = (
        f"chat_format {entry.model.chat_format}"
        if entry.model.chat_format
        else "models.yaml"
        if entry.model.chat_template is not None
        else ("GGUF template" if info.has_chat_template else "NONE (set model.chat_format)")
    )
    thinking = describe(entry, info.metadata.get("tokenizer.chat_template"))
    if thinking is not None:
        template += f" (reasoning: {thinking['format']})"
    speculative = ""
    if (spec := entry.model.speculative) is not None:
        drafts = [f"n-gram {spec.ngram.min}-{spec.ngram.max}, up to {spec.ngram.lookahead}"] if spec.ngram else []
        if spec.draft is not None and fact.draft is not None:
            size = format_bytes(fact.draft.file_bytes)
            drafts.append(f"draft model {spec.draft.path.name} ({size}, in the estimate)")
        speculative = f", speculative: {'; '.join(drafts)}"
    return (
        f"{model_id}: {info.path} ({format_bytes(info.file_bytes)}, {info.architecture}, {info.quantization}), "
        f"n_ctx {entry.model.n_ctx}, parallel {entry.runtime.parallel}, chat template: {template}{speculative}, "
        f"estimate {format_bytes(est.total)} "
        f"(weights {format_bytes(est.weights)} + KV {format_bytes(est.kv_cache)} for n_ctx x parallel "
        f"(cache K {entry.model.cache_type_k}, V {entry.model.cache_type_v}) "
        f"+ overhead {format_bytes(est.overhead)})"
    )


def _vector_text(vector: Vector) -> str:
    return ", ".join(f"{pool} {format_bytes(size)}" for pool, size in vector.entries) or "nothing"


def plan_alone(
    model_id: str, settings: Settings, facts: dict[str, ModelFacts], pools: Sequence[PoolState]
) -> LoadPlan | NoRoom:
    entry = settings.models[model_id]
    return plan_load(model_options(entry, facts[model_id], settings, pools, Vector()), pools, [])


def fits_with(
    first: str, second: str, settings: Settings, facts: dict[str, ModelFacts], pools: Sequence[PoolState]
) -> bool:
    """Whether `second` loads without evicting anything while `first` is loaded."""
    alone = plan_alone(first, settings, facts, pools)
    if not isinstance(alone, LoadPlan):
        return False
    residents = [Resident(first, alone.option.need, busy=True)]
    pools = _as_if_loaded(pools, alone.option.need)
    options = model_options(settings.models[second], facts[second], settings, pools, alone.option.need)
    together = plan_load(options, pools, residents, settings.gateway.max_loaded)
    return isinstance(together, LoadPlan) and not together.evict


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
        if isinstance(plan, LoadPlan):
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
        if not isinstance(plan, LoadPlan) or plan.evict:
            return False
        residents.append(Resident(model_id, plan.option.need, busy=True))
        held = held + plan.option.need
    return True


def _as_if_loaded(pools: Sequence[PoolState], held: Vector) -> tuple[PoolState, ...]:
    """The pools as the devices would report them with `held` loaded (a live device's free memory
    already excludes what our loaded models use; a simulated load must take it off)."""
    return tuple(replace(p, free=p.free - held[p.name]) if p.free is not None else p for p in pools)
