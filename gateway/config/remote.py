"""A remote model's entry: the OpenAI-compatible servers it passes through to, and their breaker."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from gateway.config.values import Duration, Section


class UpstreamServer(Section):
    """One OpenAI-compatible server a remote model is served by (another gateway, llama-server, vLLM...)."""

    base_url: str = Field(pattern=r"^https?://[^\s/]+", description="its OpenAI API root, e.g. http://gpu-box:8000/v1")
    api_key: str | None = Field(None, description="sent as a Bearer token; may reference ${NAME}")
    model: str | None = Field(None, min_length=1, description="the model name there; default: this entry's id")
    timeout: Duration = Field(
        600.0, description="longest wait for its answer to begin, and between two pieces of a stream"
    )
    connect_timeout: Duration = Field(5.0, description="longest wait for a connection")


def _servers(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class CircuitBreakerSection(Section):
    failures: int = Field(3, ge=1, description="consecutive failures that open the circuit of one server")
    cooldown: Duration = Field(30.0, description="how long an open circuit sends nothing to that server")


class UpstreamEntry(Section):
    """A model served by other machines: requests pass through to the first server that works, in order.
    No memory budget applies: nothing is loaded here."""

    aliases: list[str] = Field(default_factory=list)
    max_queue: int | None = Field(
        None, ge=1, description="requests in flight to this model at once; default gateway.max_queue"
    )
    upstream: Annotated[list[UpstreamServer], BeforeValidator(_servers)] = Field(
        min_length=1, description="a server, or several tried in order (failover)"
    )
    breaker: CircuitBreakerSection = CircuitBreakerSection()
