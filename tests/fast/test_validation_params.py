"""Every endpoint and dialect names the bad field the same way: the body's own path, without the
labels pydantic adds for union branches (a type, a model name, a tag that repeats a key)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.dialects.anthropic.request import parse_messages_request
from gateway.dialects.responses.request import parse_responses_request
from gateway.errors import GatewayError
from gateway.protocol import parse_chat_request

USER = [{"role": "user", "content": "hi"}]
CLAUDE = {"model": "m", "max_tokens": 5, "messages": USER}
RESPONSES = {"model": "m", "input": "hi"}
CHAT = {"model": "m", "messages": USER}
Parse = Callable[[bytes], Any]


def error_of(parse: Parse, body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(json.dumps(body).encode())
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("parse", "body", "param"),
    [
        # "stream" starts like the union label "str": it was dropped, leaving no param at all.
        (parse_messages_request, {**CLAUDE, "stream": "yes"}, "stream"),
        (parse_responses_request, {**RESPONSES, "stream": "yes"}, "stream"),
        (parse_chat_request, {**CHAT, "stream": "yes"}, "stream"),
        # A tagged block's tag ("text") repeated the key it names.
        (
            parse_messages_request,
            {**CLAUDE, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
        ),
        (
            parse_messages_request,
            {**CLAUDE, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (parse_messages_request, {"model": "m", "messages": USER}, "max_tokens"),
        (
            parse_chat_request,
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (parse_chat_request, {**CHAT, "logit_bias": {"5": "x"}}, "logit_bias.5"),
    ],
)
def test_the_param_is_the_bodys_own_path(parse: Parse, body: dict[str, Any], param: str) -> None:
    error = error_of(parse, body)
    assert error.param == param
    assert f"'{param}'" in error.message


def test_a_role_error_lists_the_dialects_own_roles() -> None:
    claude = error_of(parse_messages_request, {**CLAUDE, "messages": [{"role": "system", "content": "x"}]})
    assert claude.param == "messages[0].role" and "(user, assistant)" in claude.message
    chat = error_of(parse_chat_request, {**CHAT, "messages": [{"role": "wizard", "content": "x"}]})
    assert "(system, developer, user, assistant, tool)" in chat.message
