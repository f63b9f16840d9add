"""Engine events → OpenAI stream chunks (chat or text completion), as SSE `data:` payloads.

The response has already been committed (status 200) when this runs, so a failure is sent in-band
as `data: {"error": ...}` followed by `data: [DONE]`. When the client goes away, sse-starlette
cancels the iteration and the `finally` cancels the generation, freeing the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from gateway.engine.base import Delta, Finished, Generation
from gateway.errors import GatewayError, internal_error
from gateway.record import RequestRecord
from gateway.registry import Lease
from gateway.responses import Choice
from gateway.tools import Piece, Shaper

log = logging.getLogger(__name__)
DONE = "[DONE]"


class StreamResponder(Protocol):
    def begin_chunks(self, index: int) -> list[dict[str, Any]]: ...
    def tool_chunk(self, index: int, tool_delta: dict[str, Any]) -> dict[str, Any]: ...
    def text_chunk(self, index: int, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]: ...
    def finish_chunk(self, index: int, finish_reason: str) -> dict[str, Any]: ...
    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]: ...


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def client_finish_reason(reason: str, shaper: Shaper | None = None) -> str:
    if reason == "length":
        return "length"
    return "tool_calls" if shaper is not None and shaper.called else "stop"


def _chunks(responder: StreamResponder, index: int, pieces: list[Piece], logprobs: Any = None) -> list[str]:
    out = []
    for kind, value in pieces:
        if kind == "content":
            out.append(encode(responder.text_chunk(index, value, logprobs)))
            logprobs = None
        else:
            out.append(encode(responder.tool_chunk(index, value)))
    return out


async def event_stream(
    responder: StreamResponder,
    generations: AsyncIterator[tuple[int, Generation]],
    lease: Lease,
    record: RequestRecord | None,
    *,
    include_usage: bool,
    shared_prompt: frozenset[int] = frozenset(),
    shaper: Callable[[], Shaper] | None = None,
) -> AsyncIterator[str]:
    """Stream each (choice index, generation) in turn, then the usage chunk and [DONE].

    `shared_prompt`: choices whose prompt an earlier choice already counted (n > 1 of one prompt).
    `shaper`: turns each choice's text into content and tool-call deltas (chat with tools)."""
    prompt_tokens = completion_tokens = 0
    try:
        try:
            async for index, generation in generations:
                shape = shaper() if shaper is not None else Shaper()
                try:
                    for chunk in responder.begin_chunks(index):
                        yield encode(chunk)
                    async for event in generation:
                        if isinstance(event, Delta):
                            if record is not None:
                                record.token(event.text)
                            for line in _chunks(responder, index, shape.feed(event.text), event.logprobs):
                                yield line
                        elif isinstance(event, Finished):
                            if index not in shared_prompt:
                                prompt_tokens += event.prompt_tokens
                            completion_tokens += event.completion_tokens
                            for line in _chunks(responder, index, shape.finish()):
                                yield line
                            reason = client_finish_reason(event.finish_reason, shape)
                            yield encode(responder.finish_chunk(index, reason))
                finally:
                    generation.cancel()
            if record is not None:
                record.finished(prompt_tokens, completion_tokens)
            if include_usage:
                yield encode(responder.usage_chunk(prompt_tokens, completion_tokens))
        except GatewayError as exc:
            yield encode(exc.body())
        except Exception as exc:  # a bug of ours: still end the stream in the OpenAI way
            log.exception("stream failed")
            yield encode(internal_error(type(exc).__name__).body())
        yield DONE
    finally:
        lease.release()


async def collect(
    generation: Generation, record: RequestRecord | None
) -> tuple[str, Finished, list[dict[str, Any]] | None]:
    """Run a generation to the end for a non-streaming response: text, how it ended, logprobs."""
    parts: list[str] = []
    logprobs: list[dict[str, Any]] | None = None
    try:
        async for event in generation:
            if isinstance(event, Delta):
                parts.append(event.text)
                if event.logprobs is not None:
                    logprobs = [*(logprobs or []), *event.logprobs]
                if record is not None:
                    record.token(event.text)
            elif isinstance(event, Finished):
                return "".join(parts), event, logprobs
    finally:
        generation.cancel()
    raise internal_error("generation ended without finishing")


async def collect_all(
    generations: AsyncIterator[tuple[int, Generation]],
    record: RequestRecord | None,
    shared_prompt: frozenset[int] = frozenset(),
    shaper: Callable[[], Shaper] | None = None,
) -> tuple[list[Choice], int, int]:
    """Every choice of a non-streamed answer, with the prompt and completion token counts."""
    choices: list[Choice] = []
    prompt_tokens = completion_tokens = 0
    async for index, generation in generations:
        text, finished, logprobs = await collect(generation, record)
        if shaper is None:
            choices.append(Choice(text, client_finish_reason(finished.finish_reason), logprobs))
        else:
            shape = shaper()
            shape.feed(text)
            shape.finish()
            reason = client_finish_reason(finished.finish_reason, shape)
            choices.append(Choice(shape.text(), reason, logprobs, shape.tool_calls))
        if index not in shared_prompt:
            prompt_tokens += finished.prompt_tokens
        completion_tokens += finished.completion_tokens
    if record is not None:
        record.finished(prompt_tokens, completion_tokens)
    return choices, prompt_tokens, completion_tokens
