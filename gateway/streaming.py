"""Engine events → OpenAI chat completion chunks, as SSE `data:` payloads.

The response has already been committed (status 200) when this runs, so a failure is sent in-band
as `data: {"error": ...}` followed by `data: [DONE]`. When the client goes away, sse-starlette
cancels the iteration and the `finally` cancels the generation, freeing the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from gateway.engine.base import Delta, Finished, Generation
from gateway.errors import GatewayError, internal_error
from gateway.protocol import ChatResponder
from gateway.record import RequestRecord
from gateway.registry import Lease

log = logging.getLogger(__name__)
DONE = "[DONE]"


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def client_finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


async def chat_stream(
    responder: ChatResponder,
    generation: Generation,
    lease: Lease,
    record: RequestRecord | None,
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    try:
        yield encode(responder.role_chunk())
        try:
            async for event in generation:
                if isinstance(event, Delta):
                    if record is not None:
                        record.token(event.text)
                    yield encode(responder.content_chunk(event.text))
                elif isinstance(event, Finished):
                    if record is not None:
                        record.finished(event.prompt_tokens, event.completion_tokens)
                    yield encode(responder.finish_chunk(client_finish_reason(event.finish_reason)))
                    if include_usage:
                        yield encode(responder.usage_chunk(event.prompt_tokens, event.completion_tokens))
        except GatewayError as exc:
            yield encode(exc.body())
        except Exception as exc:  # a bug of ours: still end the stream in the OpenAI way
            log.exception("chat stream failed")
            yield encode(internal_error(type(exc).__name__).body())
        yield DONE
    finally:
        generation.cancel()
        lease.release()


async def collect(generation: Generation, record: RequestRecord | None) -> tuple[str, Finished]:
    """Run a generation to the end for a non-streaming response."""
    parts: list[str] = []
    async for event in generation:
        if isinstance(event, Delta):
            parts.append(event.text)
            if record is not None:
                record.token(event.text)
        elif isinstance(event, Finished):
            if record is not None:
                record.finished(event.prompt_tokens, event.completion_tokens)
            return "".join(parts), event
    raise internal_error("generation ended without finishing")
