"""`gateway check --measure`: load each model once, as the server would (its worker, its placement),
and set what llama.cpp and the driver measured beside the estimate, per memory pool."""

from __future__ import annotations

import asyncio

from gateway.config import ModelEntry, Settings
from gateway.config.units import format_bytes
from gateway.engine.base import Engine, GenerationParams
from gateway.engine.process.factory import ProcessEngines
from gateway.errors import GatewayError
from gateway.memory.estimate import ubatch
from gateway.memory.facts import ModelFacts
from gateway.scheduler import Scheduler


def measure_models(settings: Settings, facts: dict[str, ModelFacts], host_budget: int) -> list[str]:
    return asyncio.run(_measure(settings, facts, host_budget))


async def _measure(settings: Settings, facts: dict[str, ModelFacts], host_budget: int) -> list[str]:
    scheduler = Scheduler(settings, facts, ProcessEngines(settings, None), host_budget)
    lines = ["measured (each model loaded alone; error = (estimate - measured) / measured):"]
    try:
        for model_id in facts:
            estimate = dict(scheduler.view(model_id).pools)  # placed, not yet loaded: the estimate
            try:
                async with scheduler.hold(model_id, generate=False) as held:
                    await _longest_input(held.engine, settings.models[model_id])
                    measured = dict(scheduler.view(model_id).measured_pools or {})
            except GatewayError as exc:
                lines.append(f"  {model_id}: not loaded ({exc.message})")
                continue
            finally:
                await scheduler.unload(model_id, force=True, reason="measured")
            lines.extend(_compare(model_id, estimate, measured))
    finally:
        await scheduler.close()
    return lines


async def _longest_input(engine: Engine, entry: ModelEntry) -> None:
    """Run the longest input the model takes (and, for a generation model, a constrained answer), so
    that the figures are its peak: llama.cpp allocates its compute and output buffers at load but the
    pages count only once a full batch touches them; constrained decoding builds its vocabulary view
    on first use."""
    if entry.embedding:  # one batch of n_ctx tokens, each an output row
        token = (await engine.tokenize("hello"))[-1]
        await engine.embed([[token] * entry.model.n_ctx])
        return
    length = max(1, min(entry.model.n_ctx - 16, ubatch(entry)))  # a full batch, with room to answer
    for prompt, constraint in ((" hello" * length, None), (" hello", {"json_object": True})):
        params = GenerationParams(
            messages=None, prompt=prompt, max_tokens=4, temperature=0, top_p=1, top_k=1, min_p=0,
            repeat_penalty=1, presence_penalty=0, frequency_penalty=0, stop=[], seed=0, constraint=constraint,
        )  # fmt: skip
        async for _ in engine.generate(params):
            pass


def _compare(model_id: str, estimate: dict[str, int], measured: dict[str, int]) -> list[str]:
    out = []
    for pool, est in estimate.items():
        got = measured.get(pool)
        if not got:
            out.append(f"  {model_id} on {pool}: estimate {format_bytes(est)}, nothing measured")
            continue
        error = 100 * (est - got) / got
        out.append(
            f"  {model_id} on {pool}: estimate {format_bytes(est)}, measured {format_bytes(got)} ({error:+.1f}%)"
        )
    return out
