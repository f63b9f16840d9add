"""n > 1 streams: every choice opens in index order, whatever order the worker's pieces arrive in.

A choice's first piece can be held back (part of a UTF-8 character split across tokens, or a
possible stop string) while a later choice already has text; the openai SDK accumulates choices by
position and fails (IndexError) when index 2 appears before index 1. Checked with the SDK's own
stream accumulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from gateway.engine.base import ChoiceFinished, Delta, Event, Finished, Generation
from gateway.protocol.replies import ChatResponder
from gateway.serving.stream import chunk_stream

pytestmark = pytest.mark.anyio


async def chunks_for(events: list[Event], choices: int) -> list[dict[str, Any]]:
    generation = Generation(1, lambda _: None, choices=choices)
    for event in events:
        generation.feed(event)

    async def generations() -> AsyncIterator[tuple[int, Generation]]:
        yield 0, generation

    responder = ChatResponder("m")
    return [c async for chunk in chunk_stream(generations(), None) for c in responder.render(chunk)]


async def test_a_choice_whose_first_piece_is_held_back_still_opens_before_later_ones() -> None:
    events: list[Event] = [
        Delta("I", None, 0),
        Delta("As", None, 2),  # choice 1 has sent nothing yet
        Delta("🔍", None, 1),
        ChoiceFinished(0, "stop", 1),
        ChoiceFinished(2, "stop", 1),
        ChoiceFinished(1, "stop", 1),
        Finished("stop", 5, 3),
    ]
    chunks = await chunks_for(events, 3)
    first_seen = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice["index"] not in first_seen:
                first_seen.append(choice["index"])
    assert first_seen == [0, 1, 2]
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    assert [c.message.content for c in final.choices] == ["I", "🔍", "As"]
    assert [c.message.role for c in final.choices] == ["assistant"] * 3


async def test_an_empty_later_choice_ending_first_opens_the_earlier_ones() -> None:
    events: list[Event] = [
        ChoiceFinished(1, "stop", 0),  # choice 1 ends with nothing before 0 has sent anything
        Delta("a", None, 0),
        ChoiceFinished(0, "stop", 1),
        Finished("stop", 5, 1),
    ]
    chunks = await chunks_for(events, 2)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    assert [c.index for c in final.choices] == [0, 1]
    assert final.choices[0].message.content == "a"
    assert not final.choices[1].message.content
