"""Engine events → OpenAI stream chunks (chat or text completion), as SSE `data:` payloads.

The response has already been committed (status 200) when this runs, so a failure is sent in-band
as `data: {"error": ...}` followed by `data: [DONE]`. When the client goes away, sse-starlette
cancels the iteration and the `finally` cancels the generation; the hold around it (see
`dispatch`) then frees the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

from gateway.engine.base import ChoiceFinished, Delta, Finished, Generation
from gateway.errors import GatewayError, internal_error
from gateway.record import RequestRecord
from gateway.responses import Choice
from gateway.tools import Piece, Shaper

log = logging.getLogger(__name__)
DONE = "[DONE]"


class StreamResponder(Protocol):
    def begin_chunks(self, index: int, tool_call: bool) -> list[dict[str, Any]]: ...
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


async def chunk_stream(
    responder: StreamResponder,
    generations: AsyncIterator[tuple[int, Generation]],
    record: RequestRecord | None,
    *,
    include_usage: bool,
    shaper: Callable[[], Shaper] | None = None,
    stop_sequences: dict[int, str] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Each generation's chunks in turn (its choices numbered from the index it comes with, and
    interleaved as the worker decodes them together), then the usage chunk. Errors propagate to the
    caller, who frames them for its dialect. Closed early (the client went away), the generation in
    progress is cancelled; the hold around the stream (see `dispatch`) then frees the model.

    `shaper`: turns each choice's text into content and tool-call deltas (chat with tools). A choice's
    first chunk (its role) waits for its first piece, so that a tool call opens with `content: null`
    as OpenAI's do and a text answer with `content: ""`. `stop_sequences`: filled with the stop string
    that ended each choice that one ended (OpenAI's chunks do not say; other dialects do)."""
    prompt_tokens = completion_tokens = 0
    opened: set[int] = set()

    def opening(first: int, index: int, tool_call: bool) -> list[dict[str, Any]]:
        """The role chunks that open choice `index`. Clients accumulate choices by position (the
        openai SDK fails on index 2 before index 1), so earlier choices of the generation that have
        sent nothing yet (a piece held back as part of a UTF-8 character or a possible stop string)
        open first, with `content: null`: text or tool call, it is not known yet."""
        out = []
        for earlier in range(first, index):
            if earlier not in opened:
                opened.add(earlier)
                out.extend(responder.begin_chunks(earlier, True))
        opened.add(index)
        return out + responder.begin_chunks(index, tool_call)

    def chunks(first: int, index: int, pieces: list[Piece], logprobs: Any = None) -> list[dict[str, Any]]:
        out = []
        if index not in opened and pieces:
            out.extend(opening(first, index, pieces[0][0] == "tool"))
        for kind, value in pieces:
            if kind == "content":
                out.append(responder.text_chunk(index, value, logprobs))
                logprobs = None
            else:
                out.append(responder.tool_chunk(index, value))
        return out

    async for base, generation in generations:
        shapes = {base + i: shaper() if shaper is not None else Shaper() for i in range(generation.choices)}
        open_choices = set(shapes)
        try:
            async for event in generation:
                if isinstance(event, Delta):
                    index = base + event.index
                    if record is not None:
                        record.token(event.text)
                    for chunk in chunks(base, index, shapes[index].feed(event.text), event.logprobs):
                        yield chunk
                elif isinstance(event, ChoiceFinished | Finished):
                    if isinstance(event, Finished):
                        prompt_tokens += event.prompt_tokens
                        completion_tokens += event.completion_tokens
                    # A single choice ends with Finished; several end one by one first.
                    ended = [base + event.index] if isinstance(event, ChoiceFinished) else sorted(open_choices)
                    for index in ended:
                        open_choices.discard(index)
                        for chunk in chunks(base, index, shapes[index].finish()):
                            yield chunk
                        if index not in opened:  # an empty answer still opens with its role
                            for chunk in opening(base, index, False):
                                yield chunk
                        if stop_sequences is not None and event.stop_sequence is not None:
                            stop_sequences[index] = event.stop_sequence
                        reason = client_finish_reason(event.finish_reason, shapes[index])
                        yield responder.finish_chunk(index, reason)
        finally:
            generation.cancel()
    if record is not None:
        record.finished(prompt_tokens, completion_tokens)
    if include_usage:
        yield responder.usage_chunk(prompt_tokens, completion_tokens)


async def sse_data(chunks: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[str, None]:
    """OpenAI's framing of a stream that has already been answered with a 200: each chunk as a `data:`
    payload, a failure in-band as `data: {"error": ...}`, then `data: [DONE]`."""
    async with contextlib.aclosing(chunks):
        try:
            async for chunk in chunks:
                yield encode(chunk)
        except GatewayError as exc:
            yield encode(exc.body())
        except Exception as exc:  # a bug of ours: still end the stream in the OpenAI way
            log.exception("stream failed")
            yield encode(internal_error(type(exc).__name__).body())
    yield DONE


class _Collected:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[dict[str, Any]] | None = None
        self.finish_reason = "stop"
        self.stop_sequence: str | None = None


async def collect(generation: Generation, record: RequestRecord | None) -> tuple[list[_Collected], Finished]:
    """Run a generation to the end for a non-streaming response: each choice's text, logprobs and
    finish reason, and how the whole ended."""
    choices = [_Collected() for _ in range(generation.choices)]
    try:
        async for event in generation:
            if isinstance(event, Delta):
                choice = choices[event.index]
                choice.parts.append(event.text)
                if event.logprobs is not None:
                    choice.logprobs = [*(choice.logprobs or []), *event.logprobs]
                if record is not None:
                    record.token(event.text)
            elif isinstance(event, ChoiceFinished):
                choices[event.index].finish_reason = event.finish_reason
                choices[event.index].stop_sequence = event.stop_sequence
            elif isinstance(event, Finished):
                if generation.choices == 1:
                    choices[0].finish_reason = event.finish_reason
                    choices[0].stop_sequence = event.stop_sequence
                return choices, event
    finally:
        generation.cancel()
    raise internal_error("generation ended without finishing")


async def collect_all(
    generations: AsyncIterator[tuple[int, Generation]],
    record: RequestRecord | None,
    shaper: Callable[[], Shaper] | None = None,
) -> tuple[list[Choice], int, int]:
    """Every choice of a non-streamed answer, with the prompt and completion token counts."""
    choices: list[Choice] = []
    prompt_tokens = completion_tokens = 0
    async for _, generation in generations:
        collected, finished = await collect(generation, record)
        for item in collected:
            shape = shaper() if shaper is not None else Shaper()
            shape.feed("".join(item.parts))
            shape.finish()
            reason = client_finish_reason(item.finish_reason, shape)
            choices.append(Choice(shape.text(), reason, item.logprobs, shape.tool_calls, item.stop_sequence))
        prompt_tokens += finished.prompt_tokens
        completion_tokens += finished.completion_tokens
    if record is not None:
        record.finished(prompt_tokens, completion_tokens)
    return choices, prompt_tokens, completion_tokens
