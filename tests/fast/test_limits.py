"""Request validation's limits (gateway/protocol/limits.py, jsonbody.py): each is a 400 naming its param."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.protocol import (
    check_vocabulary,
    limits,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    parse_tokenize_request,
)
from gateway.protocol.jsonbody import parse_object

MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f"}}


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def refused(parse: Callable[[bytes], Any], body: Any) -> GatewayError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(GatewayError) as info:
        parse(raw)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


def test_nesting_is_bounded_at_64_levels() -> None:
    # The body is level 1 and its field's array level 2: 62 more arrays inside are the most allowed.
    parse_object(json.dumps({"x": nested(limits.MAX_JSON_DEPTH - 1)}).encode())
    assert refused(parse_object, {"x": nested(limits.MAX_JSON_DEPTH)}).param == "x"
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # far past Python's recursion limit
    assert "nested more than 64 levels" in refused(parse_object, deep).message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"content": "a\ud800"}]}, "messages[0].content"),
        ({"input": ["ok", "\udfff"]}, "input[1]"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        (b'{"t": NaN}', None),
        (b'{"t": Infinity}', None),
        (b'{"t": 1e999}', None),
    ],
)
def test_unicode_integers_and_numbers(body: Any, param: str | None) -> None:
    assert refused(parse_object, body).param == param


def test_edges_that_are_allowed() -> None:
    data = parse_object(json.dumps({"seed": 2**63 - 1, "s": "é😀", "f": 1e308}).encode())
    assert data["seed"] == 2**63 - 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": "x" * (limits.MAX_STOP_CHARS + 1)}, "stop"),
        ({"stop": ["a", "x" * (limits.MAX_STOP_CHARS + 1)]}, "stop[1]"),
        ({"stop": ["a"] * (limits.MAX_STOP_SEQUENCES + 1)}, "stop"),
        ({"logit_bias": {"99999999999999999999": 1}}, "logit_bias"),
        ({"logit_bias": {"\u00b2": 1}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(limits.MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
        ({"tools": [TOOL, TOOL]}, "tools"),
        ({"tools": [TOOL, TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": "d" * 8193}}]},
            "tools[0].function.description",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f" * 65}}]}, "tools[0].function.name"),
        ({"user": "u" * 257}, "user"),
        ({"model": "m" * 257}, "model"),
        ({"top_k": 2**31}, "top_k"),
    ],
)
def test_chat_limits(extra: dict[str, Any], param: str) -> None:
    assert refused(parse_chat_request, {"model": "m", "messages": MSG, **extra}).param == param


def test_other_endpoints_limits() -> None:
    prompts = ["a"] * (limits.MAX_PROMPTS + 1)
    assert refused(parse_completion_request, {"model": "m", "prompt": prompts}).param == "prompt"
    assert parse_completion_request(json.dumps({"model": "m", "prompt": ""}).encode()).prompts == [""]
    big = "x" * (limits.MAX_TOKENIZE_BYTES + 1)
    assert refused(parse_tokenize_request, {"model": "m", "input": big}).param == "input"
    many = ["a"] * (limits.MAX_EMBEDDING_INPUTS + 1)
    assert refused(parse_embedding_request, {"model": "m", "input": many}).param == "input"
    assert refused(parse_embedding_request, {"model": "m", "input": [[1, 2**31]]}).param == "input[0][1]"


def test_token_ids_are_checked_against_the_vocabulary() -> None:
    check_vocabulary([0, 49151], 49152, "logit_bias")
    check_vocabulary([10**9], 0, "input")  # a GGUF that does not say: the worker checks
    with pytest.raises(GatewayError) as info:
        check_vocabulary([3, 49152], 49152, "logit_bias")
    assert info.value.param == "logit_bias" and "0..49151" in info.value.message
    chat = parse_chat_request(json.dumps({"model": "m", "messages": MSG, "logit_bias": {"7": 1}}).encode())
    assert chat.token_ids() == [7]
