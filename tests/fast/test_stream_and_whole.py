"""A non-streamed answer is the fold of the same chunk stream a streamed one sends: the same request
both ways gives the same text, tool calls, finish reasons, log probabilities and usage. Streams are
accumulated with the openai SDK's own stream state, as a client would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.dialect_helpers import TOOL_TEMPLATE, WEATHER_CALL, sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCRIPTS = {
    "generic": FakeScript(reply=WEATHER_CALL),
    "named": FakeScript(reply=['{"city": ', '"Par', 'is"}']),
    "required": FakeScript(reply=['{"name": "get_', 'weather", "arguments": ', '{"city": "Paris"}', "}"]),
    "native": FakeScript(
        reply=["<tool_call>", '{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "</tool_call>"]
    ),
}
MSG = [{"role": "user", "content": "weather in Paris?"}]
TOOLS = {"tools": [WEATHER]}
CASES: dict[str, dict[str, Any]] = {
    "text, n=2 with logprobs": {"model": "m", "n": 2, "logprobs": True, "top_logprobs": 2, "max_tokens": 6},
    "cut by max_tokens": {"model": "m", "max_tokens": 3},
    "ended by a stop string": {"model": "m", "max_tokens": 10, "stop": ["tok3"]},
    "auto call, generic format": {"model": "generic", **TOOLS},
    "named call": {"model": "named", **TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    "required call": {"model": "required", **TOOLS, "tool_choice": "required"},
    "auto call, native template": {"model": "native", **TOOLS},
}


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    models: dict[str, dict[str, Any]] = {name: {} for name in ("m", *SCRIPTS)}
    models["native"]["_template"] = TOOL_TEMPLATE
    settings = parse_settings(make_config(models), tmp_path)
    app = create_app(settings, spawn=FakeWorkers(SCRIPTS).spawn, budget=2**40)
    with TestClient(app) as c:
        yield c


def essentials(completion: ChatCompletion) -> dict[str, Any]:
    assert completion.usage is not None
    return {
        "choices": [
            {
                "index": c.index,
                "content": c.message.content,
                "finish_reason": c.finish_reason,
                "tool_calls": [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []],  # type: ignore[union-attr]
                "logprobs": [(t.token, t.logprob) for t in c.logprobs.content or []] if c.logprobs else None,
            }
            for c in completion.choices
        ],
        # Cached prompt tokens depend on what ran before (the second of two requests reuses the first's cells).
        "usage": completion.usage.model_dump(exclude={"prompt_tokens_details"}),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_chat_streamed_and_whole_agree(client: TestClient, case: str) -> None:
    body = {"messages": MSG, "temperature": 0, **CASES[case]}
    whole = client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(response_format={"type": "text"})
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
        for _, chunk in sse_events(response):
            if chunk != "[DONE]":
                state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    folded, accumulated = (
        essentials(ChatCompletion.model_validate(whole.json())),
        # (the SDK's get_final_completion refuses a length-cut answer: the snapshot is what was accumulated)
        essentials(ChatCompletion.model_validate(state.current_completion_snapshot.model_dump())),
    )
    assert folded == accumulated
    calls = [call for choice in folded["choices"] for call in choice["tool_calls"]]
    if "call" in case:
        assert calls == [("get_weather", calls[0][1])] and '"Paris"' in calls[0][1]
        assert folded["choices"][0]["finish_reason"] == "tool_calls"
    else:
        assert not calls


@pytest.mark.parametrize("extra", [{"logprobs": 2}, {"echo": True}], ids=["logprobs", "echo"])
def test_text_completions_streamed_and_whole_agree(client: TestClient, extra: dict[str, Any]) -> None:
    body = {"model": "m", "prompt": ["a b", "c"], "n": 2, "max_tokens": 4, **extra}
    whole = Completion.model_validate(client.post("/v1/completions", json=body).json())
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    reasons: dict[int, str] = {}
    usage = None
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=streamed) as response:
        for _, data in sse_events(response):
            if data == "[DONE]":
                continue
            usage = CompletionUsage.model_validate(data["usage"]) if data.get("usage") else usage
            for choice in data["choices"]:
                index = choice["index"]
                texts[index] = texts.get(index, "") + choice["text"]
                if choice["logprobs"]:
                    tokens.setdefault(index, []).extend(choice["logprobs"]["tokens"])
                if choice["finish_reason"]:
                    reasons[index] = choice["finish_reason"]
    assert [c.text for c in whole.choices] == [texts[i] for i in range(4)]
    if "echo" in extra:
        assert [c.text[:4] for c in whole.choices] == ["a bt", "a bt", "ctok", "ctok"]
    assert [c.logprobs.tokens if c.logprobs else None for c in whole.choices] == [tokens.get(i) for i in range(4)]
    assert [c.finish_reason for c in whole.choices] == [reasons[i] for i in range(4)]
    assert whole.usage == usage
