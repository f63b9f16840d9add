"""The scheduler's snapshot as the figures `/metrics` reports per model and per memory pool."""

from __future__ import annotations

from gateway.observability.collectors import KeyLoad, ModelState, PoolFigures
from gateway.scheduler import Scheduler


def model_states(scheduler: Scheduler) -> tuple[list[ModelState], int]:
    snapshot = scheduler.snapshot()
    states = []
    for v in snapshot.models:
        batch = v.batch
        states.append(
            ModelState(
                v.model_id,
                v.state.client_value,
                v.running,
                v.holds - v.running,
                v.estimated_bytes,
                v.measured_bytes,
                slots=v.parallel,
                batch_running=batch.running if batch else 0,
                batch_waiting=batch.waiting if batch else 0,
                kv_usage=batch.kv_usage if batch else 0.0,
                reused_tokens=batch.reused_tokens if batch else 0,
                pools=dict(v.pools) if v.state.resident else {},
                keys=tuple(KeyLoad(t.key, t.priority, t.running, t.waiting, t.paused) for t in v.tenants),
                preemptions=v.preemptions,
                replayed_tokens=batch.replayed_tokens if batch else 0,
                drafted_tokens=batch.drafted_tokens if batch else 0,
                accepted_tokens=batch.accepted_tokens if batch else 0,
                restored=batch.restored if batch else 0,
                restored_tokens=batch.restored_tokens if batch else 0,
                image_encodes=batch.image_encodes if batch else 0,
                image_cache_hits=batch.image_cache_hits if batch else 0,
            )
        )
    return states, snapshot.budget


def pool_states(scheduler: Scheduler) -> list[PoolFigures]:
    snapshot = scheduler.snapshot()
    return [
        PoolFigures(
            p.name, p.budget, p.total, p.free, snapshot.pool_used(p.name), p.uuid or "", snapshot.pool_loading(p.name)
        )
        for p in snapshot.pools
    ]
