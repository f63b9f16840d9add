"""Tool-call shaping: forced calls streamed as OpenAI deltas, auto calls parsed from model formats."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.serving.tools.calls import AutoCall, NamedCall, RequiredCall, forced_schema, parse_tool_calls

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "add"}},
]


def run(shaper: Any, pieces: list[str]) -> list[tuple[str, Any]]:
    out = []
    for piece in pieces:
        out.extend(shaper.feed(piece))
    out.extend(shaper.finish())
    return out


def arguments(out: list[tuple[str, Any]]) -> str:
    return "".join(v["function"]["arguments"] for k, v in out if k == "tool")


def test_named_call_streams_arguments_after_one_opening_delta() -> None:
    shaper = NamedCall("get_weather")
    out = run(shaper, ['{"city"', ': "Paris"}'])
    assert out[0][1] == {
        "index": 0,
        "id": shaper.tool_calls[0]["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all("id" not in v and "name" not in v["function"] for _, v in out[1:])
    assert arguments(out) == '{"city": "Paris"}'
    assert shaper.called and shaper.text() is None
    assert shaper.tool_calls[0]["function"]["arguments"] == '{"city": "Paris"}'


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"name": "add", "arguments": {"a": 1, "b": 2}}'],
        ['{"na', 'me": "ad', 'd", "argu', 'ments": {"a": 1', ', "b": 2}', "}"],
        ['{ "name" : "add" , "arguments" : {"a": 1, "b": 2} } '],
    ],
)
def test_required_call_drops_the_wrapper(pieces: list[str]) -> None:
    shaper = RequiredCall()
    out = run(shaper, pieces)
    assert out[0][1]["id"].startswith("call_")
    assert out[0][1]["function"]["name"] == "add"
    assert json.loads(arguments(out)) == {"a": 1, "b": 2}
    assert json.loads(shaper.tool_calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}


def test_required_call_cut_short_has_no_call() -> None:
    shaper = RequiredCall()
    assert run(shaper, ['{"name": "ad']) == []
    assert not shaper.called


def test_auto_streams_plain_text_at_once() -> None:
    shaper = AutoCall({"add"})
    assert shaper.feed("Hello") == [("content", "Hello")]
    assert shaper.feed(" there") == [("content", " there")]
    assert shaper.finish() == [] and not shaper.called and shaper.text() == "Hello there"


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
        '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]',
        '{"name": "add", "parameters": {"a": 1, "b": 2}}',
    ],
)
def test_auto_parses_model_formats(text: str) -> None:
    shaper = AutoCall({"add"})
    out = run(shaper, [text[:5], text[5:]])
    assert shaper.called and shaper.text() is None
    assert json.loads(arguments(out)) == {"a": 1, "b": 2}


def test_auto_json_that_is_not_a_call_is_text() -> None:
    shaper = AutoCall({"add"})
    out = run(shaper, ['{"name": "unknown", "arguments": {}}'])
    assert out == [("content", '{"name": "unknown", "arguments": {}}')] and not shaper.called


def test_parse_rejects_bad_arguments() -> None:
    assert parse_tool_calls('{"name": "add", "arguments": "{not json"}', {"add"}) == []
    assert parse_tool_calls("no call here", {"add"}) == []


def test_forced_schemas() -> None:
    assert forced_schema(TOOLS, "add") == {"type": "object", "properties": {}}
    required = forced_schema(TOOLS, None)
    assert [alt["properties"]["name"] for alt in required["anyOf"]] == [{"const": "get_weather"}, {"const": "add"}]
