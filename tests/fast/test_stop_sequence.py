"""Which stop sequence ended an answer: the worker reports it, Anthropic's `stop_reason:
"stop_sequence"` and `stop_sequence` say it, OpenAI's shapes stay as they are. The real worker loop
runs beneath the parent handle (fake llama.cpp in a thread): the model answers `tok0 tok1 ...`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.test_anthropic import accumulate, stream

USER = [{"role": "user", "content": "hello there"}]
GREEDY = {"model": "m", "messages": USER, "temperature": 0}  # the fake model's answer is then fixed


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(make_config({"m": {"model": {"n_ctx": 128}}}, gateway={"cpu_threads": 0}), tmp_path)
    with TestClient(create_app(settings, spawn=FakeWorkers({"m": FakeScript(reply_tokens=8)}).spawn)) as c:
        yield c


def message(client: TestClient, **body: Any) -> Message:
    response = client.post("/v1/messages", json={**GREEDY, "max_tokens": 6, **body})
    assert response.status_code == 200, response.text
    return Message.model_validate(response.json())


def test_the_matched_stop_sequence_is_named(client: TestClient) -> None:
    answer = message(client, stop_sequences=["nowhere", "tok3", "tok2 tok3"])
    assert answer.content[0].type == "text" and answer.content[0].text == "tok0 tok1 "
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "tok2 tok3")  # the earliest in the text


def test_other_endings_name_no_stop_sequence(client: TestClient) -> None:
    assert (message(client).stop_reason, message(client).stop_sequence) == ("max_tokens", None)
    unreached = message(client, max_tokens=20, stop_sequences=["never"])
    assert (unreached.stop_reason, unreached.stop_sequence) == ("end_turn", None)


def test_streamed_message_delta_names_the_stop_sequence(client: TestClient) -> None:
    events = stream(client, **GREEDY, max_tokens=6, stop_sequences=["tok4"])
    delta = next(data for name, data in events if name == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "tok4"}
    final = accumulate(events)
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "tok4")
    assert final.content[0].text == "tok0 tok1 tok2 tok3 "


def test_streamed_end_turn_has_no_stop_sequence(client: TestClient) -> None:
    events = stream(client, **GREEDY, max_tokens=20, stop_sequences=["never"])
    delta = next(data for name, data in events if name == "message_delta")["delta"]
    assert delta == {"stop_reason": "end_turn", "stop_sequence": None}


def test_openai_shapes_do_not_carry_it(client: TestClient) -> None:
    body = {**GREEDY, "stop": ["tok3"], "max_tokens": 6}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert set(reply["choices"][0]) == {"index", "message", "finish_reason", "logprobs"}
    assert ChatCompletion.model_validate(reply).choices[0].finish_reason == "stop"
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        text = response.read().decode()
    assert "stop_sequence" not in text and '"finish_reason":"stop"' in text
