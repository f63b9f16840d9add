"""POST /v1/messages and /v1/messages/count_tokens over the fake llama.cpp, checked with the anthropic SDK's
own types (and its stream accumulator)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter
from starlette.testclient import TestClient

from gateway.dialects.anthropic.request import chat_messages, parse_messages_request, to_chat
from tests.fast.dialect_helpers import WEATHER_TOOL_ANTHROPIC, dialect_app, sse_events

USER = [{"role": "user", "content": "hello there"}]
EVENT = TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(dialect_app(make_config, tmp_path)) as c:
        yield c


def stream(client: TestClient, **body: Any) -> list[tuple[str | None, Any]]:
    with client.stream("POST", "/v1/messages", json={"stream": True, **body}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def accumulate(events: list[tuple[str | None, Any]]) -> Any:
    """The final message as the SDK's own stream helper builds it from the events."""
    snapshot = None
    for name, data in events:
        assert name == data["type"]  # every frame has an `event:` line naming its type
        if name in ("ping", "error"):
            continue
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs={})
    return snapshot


def assert_anthropic_error(response: Any, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    return str(body["error"]["message"])


def test_message(client: TestClient) -> None:
    response = client.post(
        "/v1/messages",
        json={"model": "m", "max_tokens": 3, "messages": USER},
        headers={"anthropic-version": "2023-06-01"},
    )
    message = Message.model_validate(response.json())
    assert message.role == "assistant" and message.type == "message"
    assert message.content[0].type == "text" and message.content[0].text == "tok0 tok1 tok2 "
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 2 and message.usage.output_tokens == 3
    full = Message.model_validate(
        client.post("/v1/messages", json={"model": "m", "max_tokens": 50, "messages": USER}).json()
    )
    assert full.stop_reason == "end_turn"


def test_stream_event_sequence(client: TestClient) -> None:
    events = stream(client, model="m", max_tokens=4, messages=USER, system="Be brief.")
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    final = accumulate(events)
    assert final.content[0].text == "tok0 tok1 tok2 tok3 "
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4
    assert events[0][1]["message"]["usage"]["input_tokens"] == 4  # known before the first token


def test_tool_use_message_and_stream(client: TestClient) -> None:
    body = {"model": "caller", "max_tokens": 50, "messages": USER, "tools": [WEATHER_TOOL_ANTHROPIC]}
    message = Message.model_validate(client.post("/v1/messages", json=body).json())
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    events = stream(client, **body)
    kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert kinds and set(kinds) == {"input_json_delta"}
    final = accumulate(events)
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


def test_tool_choice_tool_forces_the_named_call(client: TestClient) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": USER,
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    message = Message.model_validate(client.post("/v1/messages", json=body).json())
    assert message.content[0].type == "tool_use" and message.content[0].name == "get_weather"


def test_tool_round_trip_becomes_chat_turns() -> None:
    request = parse_messages_request(
        b"""{"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "Sys"}], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "text", "text": "thanks"}]}]}"""
    )
    assert chat_messages(request) == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]


def test_tool_round_trip_over_http(client: TestClient) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]}],
        },
    ]
    body = {"model": "m", "max_tokens": 2, "messages": messages, "tools": [WEATHER_TOOL_ANTHROPIC]}
    assert Message.model_validate(client.post("/v1/messages", json=body).json()).content[0].type == "text"


def test_count_tokens_matches_the_prompt_of_a_generation(client: TestClient) -> None:
    body = {"model": "m", "messages": USER, "tools": [WEATHER_TOOL_ANTHROPIC]}
    counted = client.post("/v1/messages/count_tokens", json=body).json()
    message = client.post("/v1/messages", json={**body, "max_tokens": 1}).json()
    assert counted == {"input_tokens": message["usage"]["input_tokens"]}
    plain = client.post("/v1/messages/count_tokens", json={"model": "m", "messages": USER}).json()
    assert plain["input_tokens"] < counted["input_tokens"]  # the tools are in the prompt, not dropped


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        ({"model": "m", "messages": USER}, 400, "invalid_request_error", "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": USER}, 400, "invalid_request_error", "max_tokens"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            400,
            "invalid_request_error",
            "role",
        ),
        ({"model": "nope", "max_tokens": 5, "messages": USER}, 404, "not_found_error", "nope"),
        (
            {"model": "m", "max_tokens": 5, "messages": USER, "temperature": 1.5},
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            400,
            "invalid_request_error",
            "document",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            400,
            "invalid_request_error",
            "thinking",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": USER,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            400,
            "invalid_request_error",
            "web_search_20250305",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": USER,
                "tools": [WEATHER_TOOL_ANTHROPIC],
                "tool_choice": {"type": "tool", "name": "other"},
            },
            400,
            "invalid_request_error",
            "other",
        ),
    ],
)
def test_errors_in_anthropic_shape(
    client: TestClient, body: dict[str, Any], status: int, kind: str, needle: str
) -> None:
    assert needle in assert_anthropic_error(client.post("/v1/messages", json=body), status, kind)


def test_malformed_json_and_unknown_route_in_anthropic_shape(client: TestClient) -> None:
    assert_anthropic_error(client.post("/v1/messages", content=b"{nope"), 400, "invalid_request_error")
    assert_anthropic_error(client.get("/v1/messages"), 405, "invalid_request_error")


def test_in_band_error_after_the_stream_began(client: TestClient) -> None:
    events = stream(client, model="crashy", max_tokens=20, messages=USER)
    assert events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "overloaded_error"
    assert "message_stop" not in [n for n, _ in events]


def test_keys_by_x_api_key_and_allow_lists(make_config: Any, tmp_path: Path) -> None:
    keys = [{"id": "a", "key": "sk-alpha-123", "models": ["m"]}]
    with TestClient(dialect_app(make_config, tmp_path, gateway={"api_keys": keys})) as client:
        body = {"model": "m", "max_tokens": 2, "messages": USER}
        assert_anthropic_error(client.post("/v1/messages", json=body), 401, "authentication_error")
        wrong = client.post("/v1/messages", json=body, headers={"x-api-key": "sk-wrong-999"})
        assert_anthropic_error(wrong, 401, "authentication_error")
        good = client.post("/v1/messages", json=body, headers={"x-api-key": "sk-alpha-123"})
        Message.model_validate(good.json())
        other = client.post("/v1/messages", json={**body, "model": "caller"}, headers={"x-api-key": "sk-alpha-123"})
        assert_anthropic_error(other, 404, "not_found_error")
        counted = client.post(
            "/v1/messages/count_tokens",
            json={"model": "caller", "messages": USER},
            headers={"x-api-key": "sk-alpha-123"},
        )
        assert_anthropic_error(counted, 404, "not_found_error")


def test_metrics_and_access_log_name_the_endpoint(client: TestClient) -> None:
    client.post("/v1/messages", json={"model": "m", "max_tokens": 2, "messages": USER})
    client.post("/v1/messages/count_tokens", json={"model": "m", "messages": USER})
    text = client.get("/metrics").text
    assert 'endpoint="/v1/messages",model="m",status="200"' in text
    assert 'endpoint="/v1/messages/count_tokens",model="m",status="200"' in text


def test_output_config_format_becomes_a_json_schema_constraint() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": USER,
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    chat = to_chat(parse_messages_request(json.dumps(body).encode()))
    assert chat.response_format is not None and chat.response_format.constraint() == {"json_schema": {"type": "object"}}
    effort = parse_messages_request(json.dumps({**body, "output_config": {"effort": "max"}}).encode())
    ask = effort.reasoning_ask()  # a reasoning control: refused by models that do not reason (test_reasoning)
    assert (ask.effort, ask.param, ask.asked) == ("high", "output_config.effort", True)
