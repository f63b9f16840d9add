"""`gateway check --measure`: load each model once, as the server would (its worker, its placement),
and set what llama.cpp and the driver measured beside the estimate, per memory pool."""

from __future__ import annotations

import asyncio

from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.memory import ModelFacts
from gateway.scheduler import Scheduler
from gateway.units import format_bytes
from gateway.workers import ProcessEngines


def measure_models(settings: Settings, facts: dict[str, ModelFacts], host_budget: int) -> list[str]:
    return asyncio.run(_measure(settings, facts, host_budget))


async def _measure(settings: Settings, facts: dict[str, ModelFacts], host_budget: int) -> list[str]:
    scheduler = Scheduler(settings, facts, ProcessEngines(settings, None), host_budget)
    lines = ["measured (each model loaded alone; error = (estimate - measured) / measured):"]
    try:
        for model_id in facts:
            estimate = dict(scheduler.view(model_id).pools)  # placed, not yet loaded: the estimate
            try:
                async with scheduler.hold(model_id, generate=False):
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
