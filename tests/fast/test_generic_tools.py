"""Tools for templates with no place for them (a generic tool prompt, calls parsed back), which models
have native tool templates, and the opening delta of streamed tool calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.testclient import TestClient

from gateway.serving.tools.generic import GenericReply, generic_messages, generic_schema, template_presents_tools
from tests.fast.dialect_helpers import TOOL_TEMPLATE, dialect_app, sse_events

USER = [{"role": "user", "content": "weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(dialect_app(make_config, tmp_path)) as c:
        yield c


def prompt_tokens(client: TestClient, model: str, **extra: Any) -> int:
    body = {"model": model, "messages": USER, "max_tokens": 1, **extra}
    return int(client.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"])


def test_models_say_which_templates_take_tools(client: TestClient) -> None:
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["m"]["tool_template"] == "generic" and cards["native"]["tool_template"] == "native"
    admin = {m["id"]: m for m in client.get("/admin/models").json()["models"]}
    assert admin["m"]["tool_template"] == "generic" and admin["native"]["tool_template"] == "native"


def test_native_tools_needs_a_template_that_reads_them() -> None:
    assert template_presents_tools(None, TOOL_TEMPLATE)
    assert not template_presents_tools(None, "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not template_presents_tools("chatml", TOOL_TEMPLATE)  # llama-cpp-python's named formats ignore tools
    assert not template_presents_tools(None, None)


def test_tools_on_auto_are_never_dropped(client: TestClient) -> None:
    # Without a place in the template, the tools go into the prompt as a generic tool prompt.
    assert prompt_tokens(client, "m", tools=TOOLS) > prompt_tokens(client, "m")
    # A native template gets them as `tools` (the fake counts message words only, so nothing changes).
    assert prompt_tokens(client, "native", tools=TOOLS) == prompt_tokens(client, "native")


def test_generic_messages() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    out = generic_messages(messages, TOOLS)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n")
    assert "get_weather" in out[0]["content"] and '"name"' in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert out[3] == {"role": "user", "content": "Result of the function call (c1): sunny"}
    assert generic_messages(USER, TOOLS)[0]["role"] == "system"
    assert generic_messages(USER, None) == USER


def test_auto_call_is_parsed_back(client: TestClient) -> None:
    body = {"model": "caller", "messages": USER, "tools": TOOLS}
    answer = ChatCompletion.model_validate(client.post("/v1/chat/completions", json=body).json())
    message = answer.choices[0].message
    assert message.content is None and answer.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and message.tool_calls[0].function.name == "get_weather"


def stream_chunks(client: TestClient, **body: Any) -> list[ChatCompletionChunk]:
    with client.stream("POST", "/v1/chat/completions", json={"stream": True, **body}) as response:
        frames = sse_events(response)
    return [ChatCompletionChunk.model_validate(data) for _, data in frames if data != "[DONE]"]


def test_streamed_tool_call_opens_with_content_null(client: TestClient) -> None:
    chunks = stream_chunks(client, model="caller", messages=USER, tools=TOOLS)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    assert "content" in chunks[0].model_dump(exclude_unset=True)["choices"][0]["delta"]  # sent, as null
    assert all(c.choices[0].delta.content is None for c in chunks if c.choices)
    text = stream_chunks(client, model="m", messages=USER)
    assert text[0].choices[0].delta.role == "assistant" and text[0].choices[0].delta.content == ""


def test_invalid_role_lists_tool(client: TestClient) -> None:
    body = {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
    message = client.post("/v1/chat/completions", json=body).json()["error"]["message"]
    assert "system, developer, user, assistant, tool" in message


def shaped(shaper: GenericReply, pieces: list[str]) -> list[tuple[str, Any]]:
    out = []
    for piece in pieces:
        out.extend(shaper.feed(piece))
    out.extend(shaper.finish())
    return out


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"response": "Hi \\"you\\"\\n\\u00e9\\ud83d\\ude00 ok"}'],
        ['{ "resp', 'onse" : "Hi \\', '"you\\"\\', "n\\u00", "e9\\ud83d", "\\ude00", ' ok"', " }"],
    ],
)
def test_generic_response_streams_the_string(pieces: list[str]) -> None:
    shaper = GenericReply({"get_weather"})
    out = shaped(shaper, pieces)
    assert all(kind == "content" for kind, _ in out)
    assert "".join(text for _, text in out) == 'Hi "you"\né😀 ok' == shaper.text()
    assert not shaper.called


def test_generic_call_is_read_back() -> None:
    shaper = GenericReply({"get_weather"})
    out = shaped(shaper, ['{"tool_call": {"name": "get_weather", ', '"arguments": {"city": "Paris"}}}'])
    assert [kind for kind, _ in out] == ["tool", "tool"]
    assert out[0][1]["function"]["name"] == "get_weather" and out[0][1]["id"].startswith("call_")
    assert json.loads(out[1][1]["function"]["arguments"]) == {"city": "Paris"}
    assert shaper.called and shaper.text() is None


@pytest.mark.parametrize(
    "pieces",
    [["plain ", "text"], ['{"tool_call": {"name": "unknown", "arguments": {}}}'], ['{"tool_call": {"na']],
)
def test_anything_else_is_content(pieces: list[str]) -> None:
    shaper = GenericReply({"get_weather"})
    assert "".join(v for _, v in shaped(shaper, pieces)) == "".join(pieces)
    assert not shaper.called


def test_generic_schema_allows_a_call_or_a_response() -> None:
    schema = generic_schema(TOOLS)
    call = schema["anyOf"][0]
    assert call["properties"]["tool_call"]["anyOf"][0]["properties"]["name"] == {"const": "get_weather"}
    jsonschema.validate({"response": "It is sunny."}, schema)
    jsonschema.validate({"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}, schema)
    with pytest.raises(jsonschema.ValidationError):  # an empty answer answers nothing
        jsonschema.validate({"response": ""}, schema)
