"""What one request did, filled in as it goes, for the access log and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    key_id: str | None = None
    model: str | None = None
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int = 0  # of the completion tokens (usage.completion_tokens_details)
    cached_tokens: int = 0  # of the prompt tokens (usage.prompt_tokens_details)
    deltas: int = 0  # text pieces sent: the completion's count when a stream is cut before its usage
    first_token_at: float | None = None
    last_token_at: float | None = None
    messages: list[dict[str, Any]] | None = None  # only when log_content is on
    output: list[str] | None = None  # only when log_content is on

    def token(self, text: str) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.deltas += 1
        if self.output is not None:
            self.output.append(text)

    def finished(
        self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0, cached_tokens: int = 0
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.reasoning_tokens = reasoning_tokens
        self.cached_tokens = cached_tokens

    def summary(self) -> dict[str, Any]:
        """What the request was, without its content: the access log's line and the recent requests."""
        return {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "request_id": self.request_id,
            "key_id": self.key_id,
            "method": self.method,
            "endpoint": self.path,
            "model": self.model,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 1),
            "duration_ms": round(self.elapsed * 1000, 1),
            "client": self.client,
        }

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def decode_seconds(self) -> float:
        if self.first_token_at is None or self.last_token_at is None:
            return 0.0
        return self.last_token_at - self.first_token_at
