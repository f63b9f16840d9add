"""Every error the API reports, with its HTTP status and OpenAI error fields.

Errors are raised as `GatewayError` anywhere in the package and turned into
`{"error": {"message", "type", "param", "code"}}` at the HTTP boundary (or sent
in-band once a stream has begun).
"""

from __future__ import annotations

import math
from typing import Any

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"


class GatewayError(Exception):
    """An error with everything needed to answer it in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def to_wire(self) -> dict[str, Any]:
        """A picklable form, for crossing the worker pipe."""
        return {
            "status": self.status,
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GatewayError:
        return cls(
            int(data["status"]),
            str(data["message"]),
            type=str(data["type"]),
            code=data.get("code"),
            param=data.get("param"),
            retry_after=data.get("retry_after"),
        )

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


class ConfigError(Exception):
    """The configuration is invalid; the message names the YAML path of each problem."""


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model[:256]}' does not exist or you do not have access to it.",  # never echo a megabyte
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(prompt_tokens: int, n_ctx: int, param: str = "messages") -> GatewayError:
    return GatewayError(
        400,
        f"This model's maximum context length is {n_ctx} tokens. However, your {param} resulted in "
        f"{prompt_tokens} tokens. Please reduce the length of the {param}.",
        param=param,
        code="context_length_exceeded",
    )


def queue_full(model: str, limit: int, retry_after: float) -> GatewayError:
    return GatewayError(
        429,
        f"Too many requests queued for model '{model}' (limit {limit}). Retry shortly.",
        type=RATE_LIMIT,
        code="queue_full",
        retry_after=retry_after,
    )


def no_room(model: str, waited: float, retry_after: float) -> GatewayError:
    return GatewayError(
        503,
        f"Cannot load model '{model}' now: the loaded models are busy and memory is full "
        f"(waited {waited:.0f}s). Retry shortly.",
        type=SERVER_ERROR,
        code="model_capacity_unavailable",
        retry_after=retry_after,
    )


def never_fits(model: str, needed: int, budget: int, pool: str = "host") -> GatewayError:
    where = (
        f"the memory budget of {budget / 2**20:.0f} MiB (gateway.memory_budget, minus pinned models)"
        if pool == "host"
        else f"{pool}'s budget of {budget / 2**20:.0f} MiB (gateway.budgets.{pool}, at most the device's memory "
        "minus gateway.gpu_reserve, minus pinned models)"
    )
    return GatewayError(
        503,
        f"Model '{model}' needs about {needed / 2**20:.0f} MiB, which can never fit in {where}.",
        type=SERVER_ERROR,
        code="model_exceeds_memory_budget",
    )


def device_out_of_memory(
    model: str, device: str, needed: int | None, free: int | None, retry_after: float | None
) -> GatewayError:
    """A load ran out of GPU memory, and evicting and retrying once did not help."""
    need = f"needed {needed / 2**20:.0f} MiB" if needed is not None else "needed more than it had"
    have = f", {free / 2**20:.0f} MiB free" if free is not None else ""
    return GatewayError(
        503,
        f"Cannot load model '{model}': {device} is out of memory ({need}{have}). Retry shortly.",
        type=SERVER_ERROR,
        code="device_out_of_memory",
        retry_after=retry_after,
    )


def load_failed(model: str, reason: str, retry_after: float | None) -> GatewayError:
    return GatewayError(
        503,
        f"Model '{model}' failed to load: {reason}",
        type=SERVER_ERROR,
        code="model_load_failed",
        retry_after=retry_after,
    )


def worker_died(model: str, detail: str) -> GatewayError:
    return GatewayError(
        503,
        f"The worker serving model '{model}' stopped unexpectedly ({detail}). "
        "The request was not completed; the next request starts a fresh worker.",
        type=SERVER_ERROR,
        code="model_worker_crashed",
        retry_after=1,
    )


def model_unloaded(model: str, reason: str, during: str) -> GatewayError:
    """The model was unloaded on purpose (`reason`: admin, shutdown, ...) while a request needed it."""
    return GatewayError(
        503,
        f"Model '{model}' was unloaded ({reason}) while {during}; retry the request.",
        type=SERVER_ERROR,
        code="model_unloaded",
        retry_after=1.0,
    )


def shutting_down() -> GatewayError:
    return GatewayError(
        503,
        "The gateway is shutting down.",
        type=SERVER_ERROR,
        code="shutting_down",
        retry_after=5,
    )


def internal_error(detail: str) -> GatewayError:
    return GatewayError(500, f"Internal gateway error: {detail}", type=SERVER_ERROR, code="internal_error")
