"""Prompt tokens whose KV cells a request reused (a cached prefix, `Finished.cached_tokens` from the
batch: tests/fast/test_batching.py) are reported as OpenAI's chat and Responses APIs report cache
reads, checked with the SDKs' own types, and reach the request record (the usage ledger) with the
reasoning tokens. Anthropic's usage is left as it was: there `input_tokens` excludes cache reads,
and clients read it as the prompt's size."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from openai.types import CompletionUsage
from openai.types.responses import ResponseUsage

from gateway.dialects.responses import reply as responses
from gateway.engine.base import Finished
from gateway.observability.record import RequestRecord
from gateway.protocol.answer import Usage
from gateway.protocol.replies import usage
from gateway.serving.stream import chunk_stream

COUNTS = Usage(prompt_tokens=60, completion_tokens=8, reasoning_tokens=3, cached_tokens=50)


def test_openai_usage_names_the_cached_prompt_tokens() -> None:
    body = CompletionUsage.model_validate(usage(COUNTS))
    assert body.prompt_tokens_details is not None and body.prompt_tokens_details.cached_tokens == 50
    assert "prompt_tokens_details" not in usage(Usage(60, 8))  # none cached: no details, as before


def test_responses_usage_names_the_cached_input_tokens() -> None:
    body = ResponseUsage.model_validate(responses.usage(60, 8, 3, 50))
    assert body.input_tokens == 60 and body.input_tokens_details.cached_tokens == 50


class _Generation:
    choices = 1

    def __init__(self) -> None:
        self._events = [Finished("stop", 60, 8, None, 3, 50)]

    def __aiter__(self) -> AsyncIterator[Finished]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Finished]:
        for event in self._events:
            yield event

    def cancel(self) -> None:
        pass


def test_the_stream_carries_cached_and_reasoning_tokens_to_the_usage_and_the_record() -> None:
    async def collect() -> tuple[list[object], RequestRecord]:
        async def generations() -> AsyncIterator[tuple[int, _Generation]]:
            yield 0, _Generation()

        record = RequestRecord("id", "POST", "/v1/chat/completions", None)
        chunks = [c async for c in chunk_stream(generations(), record)]  # type: ignore[arg-type]
        return chunks, record

    chunks, record = asyncio.run(collect())
    assert chunks[-1] == COUNTS
    assert (record.reasoning_tokens, record.cached_tokens) == (3, 50)
    assert json.dumps(usage(COUNTS))  # plain JSON
