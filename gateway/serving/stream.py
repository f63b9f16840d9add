"""Engine events → an answer's chunks (`protocol.answer`), and the non-streamed answer as a fold over
the same chunks, so that a streamed and a non-streamed answer cannot differ in tool calls, finish
reasons or usage."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.base import ChoiceFinished, Delta, Finished, Generation
from gateway.observability.record import RequestRecord
from gateway.protocol.answer import Answer, Choice, Chunk, Ended, Logprobs, Opened, Reasoning, Text, ToolDelta, Usage
from gateway.serving.tools.calls import Piece, Shaper


def client_finish_reason(reason: str, shaper: Shaper) -> str:
    if reason == "length":
        return "length"
    return "tool_calls" if shaper.called else "stop"


async def chunk_stream(
    generations: AsyncIterator[tuple[int, Generation]],
    record: RequestRecord | None,
    shaper: Callable[[], Shaper] = Shaper,
) -> AsyncGenerator[Chunk, None]:
    """Each generation's chunks in turn (its choices numbered from the index it comes with, and
    interleaved as the worker decodes them together), then the usage. Errors propagate to the caller.
    Closed early (the client went away), the generation in progress is cancelled; the hold around the
    stream (see `run`) then frees the model.

    `shaper` turns each choice's text into content and tool-call pieces (chat with tools). A choice
    opens with its first piece, so that the opening knows whether it is a tool call. Clients accumulate
    choices by position (the openai SDK fails on index 2 before index 1), so earlier choices of the
    generation that have sent nothing yet (a piece held back as part of a UTF-8 character or a possible
    stop string) open first, as tool calls: which they are is not known yet. Log probabilities of a
    delta that gave no text yet go with the choice's next text."""
    prompt_tokens = completion_tokens = reasoning_tokens = cached_tokens = 0
    opened: set[int] = set()
    pending: dict[int, Logprobs] = {}

    def opening(first: int, index: int, tool_call: bool) -> list[Chunk]:
        out: list[Chunk] = []
        for earlier in range(first, index):
            if earlier not in opened:
                opened.add(earlier)
                out.append(Opened(earlier, True))
        opened.add(index)
        out.append(Opened(index, tool_call))
        return out

    def chunks(first: int, index: int, pieces: list[Piece]) -> list[Chunk]:
        out: list[Chunk] = []
        if index not in opened and pieces:
            out.extend(opening(first, index, pieces[0][0] == "tool"))
        for kind, value in pieces:
            if kind == "content":
                out.append(Text(index, value, pending.pop(index, None)))
            elif kind == "reasoning":
                out.append(Reasoning(index, value))
            else:
                out.append(ToolDelta(index, value))
        return out

    async for base, generation in generations:
        shapes = {base + i: shaper() for i in range(generation.choices)}
        open_choices = set(shapes)
        try:
            async for event in generation:
                if isinstance(event, Delta):
                    index = base + event.index
                    if record is not None:
                        record.token(event.text)
                    if event.logprobs is not None:
                        pending[index] = [*pending.get(index, []), *event.logprobs]
                    for chunk in chunks(base, index, shapes[index].feed(event.text)):
                        yield chunk
                elif isinstance(event, ChoiceFinished | Finished):
                    if isinstance(event, Finished):
                        prompt_tokens += event.prompt_tokens
                        completion_tokens += event.completion_tokens
                        reasoning_tokens += event.reasoning_tokens
                        cached_tokens += event.cached_tokens
                    # A single choice ends with Finished; several end one by one first.
                    ended = [base + event.index] if isinstance(event, ChoiceFinished) else sorted(open_choices)
                    for index in ended:
                        open_choices.discard(index)
                        for chunk in chunks(base, index, shapes[index].finish()):
                            yield chunk
                        if index not in opened:  # an empty answer still opens
                            for chunk in opening(base, index, False):
                                yield chunk
                        pending.pop(index, None)
                        reason = client_finish_reason(event.finish_reason, shapes[index])
                        yield Ended(index, reason, event.stop_sequence)
        finally:
            generation.cancel()
    if record is not None:
        record.finished(prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens)
    yield Usage(prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens)


@dataclass
class _Folding:
    parts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    logprobs: Logprobs | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    ended: Ended | None = None

    def choice(self) -> Choice:
        assert self.ended is not None
        # A model that thought and said nothing (cut off mid-thought) answers content null, as vLLM does.
        text = None if self.tool_calls or (self.thinking and not self.parts) else "".join(self.parts)
        reasoning = "".join(self.thinking) if self.thinking else None
        return Choice(
            text, self.ended.finish_reason, self.logprobs, self.tool_calls, self.ended.stop_sequence, reasoning
        )


async def fold(model: str, chunks: AsyncIterator[Chunk]) -> Answer:
    """The whole answer the chunks make: each choice's text, log probabilities, tool calls (their
    deltas joined as a client's stream accumulator joins them) and how it ended; and the usage."""
    choices: dict[int, _Folding] = {}
    async for chunk in chunks:
        if isinstance(chunk, Usage):
            return Answer(model, [choices[i].choice() for i in sorted(choices)], chunk)
        folding = choices.setdefault(chunk.index, _Folding())
        if isinstance(chunk, Text):
            folding.parts.append(chunk.text)
            if chunk.logprobs is not None:
                folding.logprobs = [*(folding.logprobs or []), *chunk.logprobs]
        elif isinstance(chunk, Reasoning):
            folding.thinking.append(chunk.text)
        elif isinstance(chunk, ToolDelta):
            _join_tool_delta(folding.tool_calls, chunk.delta)
        elif isinstance(chunk, Ended):
            folding.ended = chunk
    raise AssertionError("a chunk stream ends with its usage")


def _join_tool_delta(calls: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    position = delta["index"]
    function = delta.get("function", {})
    if position == len(calls):
        calls.append(
            {
                "id": delta["id"],
                "type": delta.get("type", "function"),
                "function": {"name": function.get("name", ""), "arguments": function.get("arguments", "")},
            }
        )
    else:
        calls[position]["function"]["arguments"] += function.get("arguments", "")
