"""Prometheus metrics for the gateway, in a registry of their own (no global state).

Request, load and upstream figures are recorded here as they happen; model state (queue depth,
in-flight requests, memory, budget), memory pools and circuit breakers are read at scrape time by the
collectors in `collectors.py`, which `watch`, `watch_pools` and `watch_circuits` register.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability.collectors import (
    CircuitCollector,
    ModelState,
    PoolCollector,
    PoolFigures,
    StateCollector,
    StoreCollector,
    StoreFigures,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


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
        self.tokens = Counter(
            "gateway_tokens",
            "tokens per key, model and kind (prompt, completion, reasoning, cached), as the usage ledger counts them",
            ["key", "model", "kind"],
            registry=r,
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
        self.registry.register(CircuitCollector(circuits))

    def upstream_attempt(self, model: str, upstream: str, outcome: str, seconds: float) -> None:
        self.upstream_requests.labels(model, upstream, outcome).inc()
        if outcome in ("ok", "client_error"):
            self.upstream_first_byte.labels(model, upstream).observe(seconds)

    def watch_store(self, figures: Callable[[], StoreFigures]) -> None:
        self.registry.register(StoreCollector(figures))

    def usage(self, key: str, model: str, kinds: dict[str, int]) -> None:
        for kind, count in kinds.items():
            if count:
                self.tokens.labels(key, model, kind).inc(count)

    def watch(self, state: Callable[[], tuple[list[ModelState], int]]) -> None:
        self.registry.register(StateCollector(state))

    def watch_pools(self, pools: Callable[[], list[PoolFigures]]) -> None:
        """Report the memory pools at scrape time: budget, used by our models, device total and free."""
        self.registry.register(PoolCollector(pools))

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
