from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.errors import GatewayError
from gateway.protocol import parse_chat_request
from gateway.protocol.answer import Answer, Choice, Ended, Opened, Text, Usage
from gateway.protocol.replies import ChatResponder

TOOL_F = {"type": "function", "function": {"name": "f"}}
OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**changes: object) -> bytes:
    data = {**OK, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def error_of(raw: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_chat_request(raw)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_valid_request_and_defaults() -> None:
    req = parse_chat_request(
        body(max_completion_tokens=5, stop="x", stream=True, stream_options={"include_usage": True})
    )
    assert req.completion_limit == 5
    assert req.stop_list == ["x"]
    assert req.include_usage


def test_content_parts_are_joined() -> None:
    req = parse_chat_request(
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    )
    assert req.messages[0].text() == "ab"


def test_malformed_json() -> None:
    err = error_of(b"{not json")
    assert "not valid JSON" in err.message
    assert error_of(b"[1, 2]").message.startswith("The request body must be a JSON object")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (body(messages=...), "messages"),
        (body(model=...), "model"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (body(messages=[{"content": "x"}]), "messages[0].role"),
        (body(max_tokens=-1), "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens="5"), "max_tokens"),
        (body(max_completion_tokens=-3), "max_completion_tokens"),
        (body(temperature="hot"), "temperature"),
        (body(temperature=3), "temperature"),
        (body(top_p=1.5), "top_p"),
        (body(stream="yes"), "stream"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (body(seed=1.5), "seed"),
        (body(n=17), "n"),
        (body(n=0), "n"),
        (body(top_logprobs=3), "top_logprobs"),
        (body(logprobs=True, top_logprobs=21), "top_logprobs"),
        (body(logprobs="yes"), "logprobs"),
        (body(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
        (body(tool_choice="auto"), "tool_choice"),
        (
            body(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": {"name": "g"}},
            ),
            "tool_choice",
        ),
        (body(functions=[{"name": "f"}]), "functions"),
        (body(messages=[{"role": "tool", "content": "42"}]), "messages[0]"),
        (body(logit_bias={"a": 5}), "logit_bias"),
        (body(logit_bias={"1": -101}), "logit_bias.1"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(response_format={"type": "xml"}), "response_format.type"),
        (body(response_format={"type": "json_schema"}), "response_format"),
        (
            body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format.json_schema.schema",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]),
            "messages[0].content[0].type",
        ),
    ],
)
def test_bad_fields_name_their_param(raw: bytes, param: str) -> None:
    assert error_of(raw).param == param


def test_role_error_says_what_is_supported() -> None:
    assert "not a supported role" in error_of(body(messages=[{"role": "wizard", "content": "x"}])).message


def test_response_shapes_validate_with_sdk_types() -> None:
    responder = ChatResponder("m")
    ChatCompletion.model_validate(responder.completion(Answer("m", [Choice("hello", "stop")], Usage(3, 1))))
    chunks = [
        c
        for chunk in [Opened(0, False), Text(0, "he"), Ended(0, "length"), Usage(3, 1)]
        for c in responder.render(chunk)
    ]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert parsed[2].choices[0].finish_reason == "length"
    assert parsed[3].choices == [] and parsed[3].usage is not None and parsed[3].usage.total_tokens == 4
    assert len({c.id for c in parsed}) == 1
