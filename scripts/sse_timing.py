"""One streamed chat completion, timed from its SSE frames: what every benchmark measures a server by."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Timing:
    ttft: float  # seconds from request to first content (nan: none came)
    tokens: int  # completion tokens as the usage chunk says, else content chunks
    decode_seconds: float  # first content to last content
    ended: float = 0.0  # time.perf_counter() when the stream ended

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0


def sse_data(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an OpenAI stream's `data:` frames (`[DONE]` and comments left out)."""
    for line in response.iter_lines():
        if line.startswith("data: {"):
            yield json.loads(line[6:])


def stream_timing(client: httpx.Client, url: str, body: dict[str, Any], timeout: float = 300) -> Timing:
    """POST `body` streamed to `url`/v1/chat/completions (usage asked for) and time its content."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = None
    chunks = 0
    usage_tokens = None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for data in sse_data(response):
            if data.get("usage"):
                usage_tokens = data["usage"]["completion_tokens"]
            if data.get("choices") and data["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
                chunks += 1
    ended = time.perf_counter()
    if first is None or last is None:
        return Timing(float("nan"), usage_tokens or 0, 0.0, ended)
    return Timing(first - started, usage_tokens or chunks, last - first, ended)
