"""A remote model: its servers tried in order, each behind a circuit breaker, until one answers.

Failover happens only before the first byte reaches the client: a server that fails afterwards
ends that response with an in-band error (proxy.py) and counts against its breaker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from gateway.config import UpstreamEntry, UpstreamServer
from gateway.errors import GatewayError
from gateway.upstream.breaker import Circuit, CircuitBreaker
from gateway.upstream.client import Opened, UpstreamFailure, label, open_request


class UpstreamObserver(Protocol):
    """Told about each attempt (metrics implement this)."""

    def upstream_attempt(self, model: str, upstream: str, outcome: str, seconds: float) -> None: ...


def upstream_error(model: str, failures: list[UpstreamFailure], retry_after: float | None) -> GatewayError:
    """No server could take the request: 504 when the last one timed out, 503 when every circuit is
    open, else 502; the message names what happened with each server."""
    detail = "; ".join(f.detail for f in failures) or "no server configured"
    kinds = {f.kind for f in failures}
    if kinds == {"circuit_open"}:
        status, code = 503, "upstream_unavailable"
    elif failures and failures[-1].kind == "timeout":
        status, code = 504, "upstream_timeout"
    else:
        status, code = 502, "upstream_failed"
    return GatewayError(
        status,
        f"Model '{model}' is served by other servers, and none could answer: {detail}",
        type="server_error",
        code=code,
        retry_after=retry_after,
    )


class UpstreamModel:
    def __init__(
        self,
        model_id: str,
        entry: UpstreamEntry,
        observer: UpstreamObserver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_id = model_id
        self.entry = entry
        self.observer = observer
        self.servers = [
            (server, CircuitBreaker(entry.breaker.failures, entry.breaker.cooldown, clock)) for server in entry.upstream
        ]
        self.in_flight = 0

    def circuits(self) -> list[tuple[str, Circuit]]:
        return [(label(server), breaker.state) for server, breaker in self.servers]

    def breaker_of(self, server: UpstreamServer) -> CircuitBreaker:
        return next(b for s, b in self.servers if s is server)

    async def open(
        self, client: httpx.AsyncClient, path: str, payload: dict[str, Any], *, stream: bool, request_id: str | None
    ) -> Opened:
        """The first server's answer that is not a failure; raises the aggregated error otherwise."""
        failures: list[UpstreamFailure] = []
        waits: list[float] = []
        for server, breaker in self.servers:
            where = label(server)
            if not breaker.allow():
                waits.append(breaker.retry_after())
                failures.append(UpstreamFailure("circuit_open", f"{where}: circuit open after repeated failures"))
                continue
            body = {**payload, "model": server.model or self.model_id}
            started = time.perf_counter()
            try:
                opened = await open_request(client, server, path, body, stream=stream, request_id=request_id)
            except UpstreamFailure as failure:
                breaker.failed()
                self.observer.upstream_attempt(self.model_id, where, failure.kind, time.perf_counter() - started)
                failures.append(failure)
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.succeeded()  # a 4xx too: the server works, the request was at fault
            outcome = "ok" if opened.status < 400 else "client_error"
            self.observer.upstream_attempt(self.model_id, where, outcome, time.perf_counter() - started)
            return opened
        retry = min(waits) if waits and len(waits) == len(self.servers) else None
        raise upstream_error(self.model_id, failures, retry)

    def broke(self, opened: Opened, kind: str) -> None:
        """The server failed after its first byte (mid-stream)."""
        self.breaker_of(opened.server).failed()
        self.observer.upstream_attempt(self.model_id, label(opened.server), kind, 0.0)
