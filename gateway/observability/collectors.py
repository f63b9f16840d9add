"""What `/metrics` reads at scrape time: the figures the gateway hands over (`ModelState` per model,
`PoolFigures` per memory pool, circuit states) and the Prometheus collectors that turn them into
gauge families. `Metrics` (metrics.py) registers them; `gauges.py` makes the figures from the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class KeyLoad:
    """One key's requests on one model at one priority (scheduler/fairness.py)."""

    key: str
    priority: str
    running: int
    waiting: int
    paused: int  # of those waiting: preempted for an interactive request


@dataclass(frozen=True)
class ModelState:
    model: str
    state: str
    in_flight: int  # requests generating
    queued: int  # requests holding the model and waiting for their turn
    estimated_bytes: int
    measured_bytes: int | None
    slots: int = 1  # runtime.parallel
    batch_running: int = 0  # in the worker's batch
    batch_waiting: int = 0  # in the worker, for a slot or KV room
    kv_usage: float = 0.0  # KV cells held or reserved by running requests, 0..1
    reused_tokens: int = 0  # prompt tokens served from the prefix cache since the worker loaded
    pools: Mapping[str, int] = field(default_factory=dict)  # bytes held per memory pool (resident models)
    keys: tuple[KeyLoad, ...] = ()
    preemptions: int = 0  # batch requests paused for interactive ones, since start
    replayed_tokens: int = 0  # recomputed for paused requests whose cells were given away (since the worker loaded)
    drafted_tokens: int = 0  # speculative decoding: tokens drafted (since the worker loaded)
    accepted_tokens: int = 0  # of those, tokens the model sampled too
    restored: int = 0  # prefixes loaded from the prefix store (since the worker loaded)
    restored_tokens: int = 0
    image_encodes: int = 0  # images run through the vision projector (since the worker loaded)
    image_cache_hits: int = 0  # images whose encoding came from the worker's cache instead


@dataclass(frozen=True)
class PoolFigures:
    """One memory pool (host RAM, or a GPU) at scrape time."""

    pool: str
    budget: int
    total: int | None  # device memory; None for the host
    free: int | None  # what the device reports free; None for the host
    used: int  # what loaded models hold there (and unloading ones, until their workers exit)
    uuid: str = ""
    loading: int = 0  # what models being loaded have claimed there


class PoolCollector(Collector):
    def __init__(self, pools: Callable[[], list[PoolFigures]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "uuid"]
        total = GaugeMetricFamily("gateway_pool_total_bytes", "memory of the device (GPU pools)", labels=labels)
        budget = GaugeMetricFamily("gateway_pool_budget_bytes", "what our models may hold in the pool", labels=labels)
        used = GaugeMetricFamily("gateway_pool_used_bytes", "what loaded models hold in the pool", labels=labels)
        loading = GaugeMetricFamily(
            "gateway_pool_loading_bytes", "what models being loaded have claimed in the pool", labels=labels
        )
        free = GaugeMetricFamily(
            "gateway_pool_free_bytes",
            "free memory the device reports (GPU pools: other processes count)",
            labels=labels,
        )
        for p in self._pools():
            budget.add_metric([p.pool, p.uuid], p.budget)
            used.add_metric([p.pool, p.uuid], p.used)
            loading.add_metric([p.pool, p.uuid], p.loading)
            if p.total is not None:
                total.add_metric([p.pool, p.uuid], p.total)
            if p.free is not None:
                free.add_metric([p.pool, p.uuid], p.free)
        yield from (total, budget, used, loading, free)


class StateCollector(Collector):
    def __init__(self, state: Callable[[], tuple[list[ModelState], int]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        models, budget = self._state()
        loaded = GaugeMetricFamily("gateway_model_loaded", "1 when the model is loaded", labels=["model"])
        in_flight = GaugeMetricFamily("gateway_in_flight_requests", "requests generating", labels=["model"])
        queued = GaugeMetricFamily("gateway_queue_depth", "requests waiting for the model", labels=["model"])
        estimated = GaugeMetricFamily("gateway_model_estimated_bytes", "estimate from GGUF metadata", labels=["model"])
        measured = GaugeMetricFamily("gateway_model_measured_bytes", "worker resident memory", labels=["model"])
        per_pool = GaugeMetricFamily(
            "gateway_model_memory_bytes",
            "bytes a resident model holds per memory pool (host, cuda0...): estimated until loaded, then measured",
            labels=["model", "pool"],
        )
        for m in models:
            for pool, size in sorted(m.pools.items()):
                per_pool.add_metric([m.model, pool], size)
            loaded.add_metric([m.model], 1.0 if m.state == "loaded" else 0.0)
            in_flight.add_metric([m.model], m.in_flight)
            queued.add_metric([m.model], m.queued)
            estimated.add_metric([m.model], m.estimated_bytes)
            if m.measured_bytes is not None:
                measured.add_metric([m.model], m.measured_bytes)
        yield from (loaded, in_flight, queued, estimated, measured, per_pool)
        yield from _batch_gauges(models)
        yield GaugeMetricFamily("gateway_memory_budget_bytes", "gateway.memory_budget", value=budget)
        # The host pool as the scheduler counts it (the larger of measured and estimated); a load's
        # claim apart, since the models it evicts hold theirs until their workers exit.
        used = sum(m.pools.get("host", 0) for m in models if m.state == "loaded")
        loading = sum(m.pools.get("host", 0) for m in models if m.state == "loading")
        yield GaugeMetricFamily("gateway_memory_used_bytes", "host memory held by loaded models", value=used)
        yield GaugeMetricFamily("gateway_memory_loading_bytes", "host memory claimed by loading models", value=loading)


class CircuitCollector(Collector):
    def __init__(self, circuits: Callable[[], list[tuple[str, str, str]]]) -> None:
        self._circuits = circuits

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_upstream_circuit_open",
            "1 while an upstream server's circuit breaker keeps requests away (open or half-open)",
            labels=["model", "upstream"],
        )
        for model, upstream, state in self._circuits():
            family.add_metric([model, upstream], 0.0 if state == "closed" else 1.0)
        yield family


def _batch_gauges(models: list[ModelState]) -> Iterator[Metric]:
    """Load signals for routers and autoscalers (docs/operating.md, "Signals for routers and autoscalers")."""
    running = GaugeMetricFamily(
        "gateway_requests_running", "requests decoding in the model's continuous batch", labels=["model"]
    )
    waiting = GaugeMetricFamily(
        "gateway_requests_waiting",
        "requests admitted but not decoding yet: queued for the model or a slot",
        labels=["model"],
    )
    slots = GaugeMetricFamily("gateway_batch_slots", "runtime.parallel: requests decoded together", labels=["model"])
    kv = GaugeMetricFamily(
        "gateway_kv_cache_usage_ratio",
        "share of the KV pool held or reserved by running requests (0..1)",
        labels=["model"],
    )
    reused = CounterMetricFamily(
        "gateway_prefix_cache_reused_tokens",
        "prompt tokens whose KV cells were reused from an earlier or running request (since the worker loaded)",
        labels=["model"],
    )
    restored = CounterMetricFamily(
        "gateway_prefix_store_restored",
        "prompt prefixes whose KV cells were loaded from the prefix store (since the worker loaded)",
        labels=["model"],
    )
    restored_tokens = CounterMetricFamily(
        "gateway_prefix_store_restored_tokens",
        "tokens of the prefixes loaded from the prefix store (since the worker loaded)",
        labels=["model"],
    )
    yield from _priority_gauges(models)
    yield from _speculation_metrics(models)
    yield from _image_counters(models)
    for m in models:
        reused.add_metric([m.model], m.reused_tokens)
        restored.add_metric([m.model], m.restored)
        restored_tokens.add_metric([m.model], m.restored_tokens)
        running.add_metric([m.model], m.batch_running)
        waiting.add_metric([m.model], m.queued + m.batch_waiting)
        slots.add_metric([m.model], m.slots)
        kv.add_metric([m.model], m.kv_usage)
    yield from (running, waiting, slots, kv, reused, restored, restored_tokens)


@dataclass(frozen=True)
class StoreFigures:
    """The lasting state's backends at scrape time: each one reachable or not, and the usage rows
    waiting to be written (the spill) or lost because it was full."""

    up: Mapping[str, bool]  # "store", "shared_limits" → reachable
    usage_pending: int
    usage_dropped: int
    prefix_store: tuple[int, int] | None = None  # files and bytes in gateway.prefix_store, when one is set


class StoreCollector(Collector):
    def __init__(self, figures: Callable[[], StoreFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self._figures()
        up = GaugeMetricFamily(
            "gateway_state_backend_up",
            "1 while a backend of the lasting state answers (store: usage ledger and Responses; shared_limits: Redis)",
            labels=["backend"],
        )
        for backend, ok in figures.up.items():
            up.add_metric([backend], 1.0 if ok else 0.0)
        yield up
        yield GaugeMetricFamily(
            "gateway_usage_rows_pending",
            "usage rows not written to the store yet (the spill)",
            value=figures.usage_pending,
        )
        yield CounterMetricFamily(
            "gateway_usage_rows_dropped", "usage rows lost because the spill was full", value=figures.usage_dropped
        )
        if figures.prefix_store is not None:
            files, size = figures.prefix_store
            yield GaugeMetricFamily(
                "gateway_prefix_store_files", "prompt prefixes kept in the prefix store", value=files
            )
            yield GaugeMetricFamily("gateway_prefix_store_bytes", "bytes the prefix store holds on disk", value=size)


def _speculation_metrics(models: list[ModelState]) -> Iterator[Metric]:
    """Speculative decoding (`model.speculative`), per model since its worker loaded."""
    drafted = CounterMetricFamily(
        "gateway_speculative_drafted_tokens",
        "tokens drafted for verification (n-gram or draft model)",
        labels=["model"],
    )
    accepted = CounterMetricFamily(
        "gateway_speculative_accepted_tokens",
        "drafted tokens the model sampled too: tokens made without a decode step of their own",
        labels=["model"],
    )
    rate = GaugeMetricFamily(
        "gateway_speculative_acceptance_ratio", "accepted / drafted tokens since the worker loaded", labels=["model"]
    )
    for m in models:
        drafted.add_metric([m.model], m.drafted_tokens)
        accepted.add_metric([m.model], m.accepted_tokens)
        rate.add_metric([m.model], m.accepted_tokens / m.drafted_tokens if m.drafted_tokens else 0.0)
    yield from (drafted, accepted, rate)


def _image_counters(models: list[ModelState]) -> Iterator[Metric]:
    """The vision projector's work: images encoded, and those the worker's encode cache spared it."""
    encodes = CounterMetricFamily(
        "gateway_image_encodes",
        "images run through a model's vision projector (since the worker loaded)",
        labels=["model"],
    )
    hits = CounterMetricFamily(
        "gateway_image_cache_hits",
        "images whose encoding the worker had kept from an earlier request (model.image_cache), since it loaded",
        labels=["model"],
    )
    for m in models:
        encodes.add_metric([m.model], m.image_encodes)
        hits.add_metric([m.model], m.image_cache_hits)
    yield from (encodes, hits)


def _priority_gauges(models: list[ModelState]) -> Iterator[Metric]:
    """Who holds the turns: per priority, per key, and how often batch work gave way (docs/operating.md)."""
    by_priority = GaugeMetricFamily(
        "gateway_priority_requests",
        "requests holding a model's turns (running) or waiting for one, per priority; paused: batch requests "
        "preempted for interactive ones, waiting to resume",
        labels=["model", "priority", "state"],
    )
    by_key = GaugeMetricFamily(
        "gateway_key_requests", "each key's requests on a model: running or waiting", labels=["model", "key", "state"]
    )
    preempted = CounterMetricFamily(
        "gateway_preemptions", "batch requests paused to give their turn to an interactive one", labels=["model"]
    )
    replayed = CounterMetricFamily(
        "gateway_preemption_replayed_tokens",
        "tokens recomputed for paused requests whose KV cells were given to others (since the worker loaded)",
        labels=["model"],
    )
    for m in models:
        preempted.add_metric([m.model], m.preemptions)
        replayed.add_metric([m.model], m.replayed_tokens)
        totals: dict[tuple[str, str], int] = {}
        for load in m.keys:
            by_key.add_metric([m.model, load.key, "running"], load.running)
            by_key.add_metric([m.model, load.key, "waiting"], load.waiting)
            states = (("running", load.running), ("waiting", load.waiting - load.paused), ("paused", load.paused))
            for state, n in states:
                totals[(load.priority, state)] = totals.get((load.priority, state), 0) + n
        for priority in ("interactive", "batch"):
            for state in ("running", "waiting", "paused"):
                by_priority.add_metric([m.model, priority, state], totals.get((priority, state), 0))
    yield from (by_priority, by_key, preempted, replayed)
