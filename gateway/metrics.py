"""Prometheus collectors for the gateway, in a registry of their own (no global state).

Request figures are recorded as requests finish; model state (queue depth, in-flight requests,
memory, budget) is read from the scheduler's snapshot at scrape time through `state`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


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


@dataclass(frozen=True)
class PoolFigures:
    """One memory pool (host RAM, or a GPU) at scrape time."""

    pool: str
    budget: int
    total: int | None  # device memory; None for the host
    free: int | None  # what the device reports free; None for the host
    used: int  # what our models hold there
    uuid: str = ""


class _PoolCollector(Collector):
    def __init__(self, pools: Callable[[], list[PoolFigures]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "uuid"]
        total = GaugeMetricFamily("gateway_pool_total_bytes", "memory of the device (GPU pools)", labels=labels)
        budget = GaugeMetricFamily("gateway_pool_budget_bytes", "what our models may hold in the pool", labels=labels)
        used = GaugeMetricFamily("gateway_pool_used_bytes", "what our models hold in the pool", labels=labels)
        free = GaugeMetricFamily(
            "gateway_pool_free_bytes",
            "free memory the device reports (GPU pools: other processes count)",
            labels=labels,
        )
        for p in self._pools():
            budget.add_metric([p.pool, p.uuid], p.budget)
            used.add_metric([p.pool, p.uuid], p.used)
            if p.total is not None:
                total.add_metric([p.pool, p.uuid], p.total)
            if p.free is not None:
                free.add_metric([p.pool, p.uuid], p.free)
        yield from (total, budget, used, free)


class _StateCollector(Collector):
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
        used = sum((m.measured_bytes or m.estimated_bytes) for m in models if m.state in ("loaded", "loading"))
        yield GaugeMetricFamily("gateway_memory_used_bytes", "memory held by resident models", value=used)


class _CircuitCollector(Collector):
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
    """Load signals for routers and autoscalers (README: "Signals for routers and autoscalers")."""
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
    for m in models:
        reused.add_metric([m.model], m.reused_tokens)
        running.add_metric([m.model], m.batch_running)
        waiting.add_metric([m.model], m.queued + m.batch_waiting)
        slots.add_metric([m.model], m.slots)
        kv.add_metric([m.model], m.kv_usage)
    yield from (running, waiting, slots, kv, reused)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "HTTP requests answered", ["model", "endpoint", "status"], registry=r
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "request to first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "request to last byte",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("gateway_prompt_tokens", "prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("gateway_completion_tokens", "tokens generated", ["model"], registry=r)
        self.tokens_per_second = Histogram(
            "gateway_tokens_per_second", "decode rate per request", ["model"], buckets=_RATE_BUCKETS, registry=r
        )
        self.loads = Counter("gateway_model_loads", "model loads by outcome", ["model", "outcome"], registry=r)
        self.load_duration = Histogram(
            "gateway_model_load_duration_seconds",
            "worker start to model ready",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.unloads = Counter(
            "gateway_model_unloads",
            "unloads by reason (lru, ttl, admin, crash, reload, shutdown, device_oom)",
            ["model", "reason"],
            registry=r,
        )
        self.crashes = Counter("gateway_worker_crashes", "workers that exited unexpectedly", ["model"], registry=r)
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "attempts on upstream servers by outcome (ok, client_error, server_error, connect_error, timeout, broken)",
            ["model", "upstream", "outcome"],
            registry=r,
        )
        self.upstream_first_byte = Histogram(
            "gateway_upstream_first_byte_seconds",
            "request sent to an upstream server to its first byte",
            ["model", "upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def watch_circuits(self, circuits: Callable[[], list[tuple[str, str, str]]]) -> None:
        """Report upstream circuit breakers at scrape time: (model, upstream, closed|open|half_open)."""
        self.registry.register(_CircuitCollector(circuits))

    def upstream_attempt(self, model: str, upstream: str, outcome: str, seconds: float) -> None:
        self.upstream_requests.labels(model, upstream, outcome).inc()
        if outcome in ("ok", "client_error"):
            self.upstream_first_byte.labels(model, upstream).observe(seconds)

    def watch(self, state: Callable[[], tuple[list[ModelState], int]]) -> None:
        self.registry.register(_StateCollector(state))

    def watch_pools(self, pools: Callable[[], list[PoolFigures]]) -> None:
        """Report the memory pools at scrape time: budget, used by our models, device total and free."""
        self.registry.register(_PoolCollector(pools))

    # Registry observer -------------------------------------------------------------------------

    def model_loaded(self, model: str, seconds: float) -> None:
        self.loads.labels(model, "ok").inc()
        self.load_duration.labels(model).observe(seconds)

    def model_load_failed(self, model: str) -> None:
        self.loads.labels(model, "failed").inc()

    def model_unloaded(self, model: str, reason: str) -> None:
        self.unloads.labels(model, reason).inc()

    def worker_crashed(self, model: str) -> None:
        self.crashes.labels(model).inc()
        self.unloads.labels(model, "crash").inc()

    # Requests ----------------------------------------------------------------------------------

    def request_done(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def generation_done(
        self, model: str, ttft: float | None, prompt_tokens: int, completion_tokens: int, decode_seconds: float
    ) -> None:
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)
        if completion_tokens > 1 and decode_seconds > 0:
            self.tokens_per_second.labels(model).observe((completion_tokens - 1) / decode_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
