"""Legacy text completions and the tokenizer helpers over the fake llama.cpp."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(make_config({"m": {}, "base": {"_template": None}}), tmp_path)
    with TestClient(create_app(settings, spawn=FakeWorkers().spawn)) as c:
        yield c


def test_completion_with_prompt_list_and_echo(client: TestClient) -> None:
    body = {"model": "base", "prompt": ["one two", "three"], "max_tokens": 2, "echo": True}
    completion = Completion.model_validate(client.post("/v1/completions", json=body).json())
    assert completion.object == "text_completion"
    assert [c.text for c in completion.choices] == ["one twotok0 tok1 ", "threetok0 tok1 "]
    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)


def test_completion_default_max_tokens_is_16(make_config: Any, tmp_path: Path) -> None:
    from gateway.testing.fakellama import FakeScript

    settings = parse_settings(make_config({"m": {}}), tmp_path)
    app = create_app(settings, spawn=FakeWorkers({"m": FakeScript(reply_tokens=40)}).spawn)
    with TestClient(app) as c:
        completion = Completion.model_validate(c.post("/v1/completions", json={"model": "m", "prompt": "hi"}).json())
    assert completion.usage is not None and completion.usage.completion_tokens == 16


def test_completion_stream(client: TestClient) -> None:
    body = {
        "model": "m",
        "prompt": ["a", "b"],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    raw = [json.loads(p) for p in payloads[:-1]]
    for chunk in raw:  # OpenAI streams finish_reason null until the end; the SDK type only knows final values
        for choice in chunk["choices"]:
            assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
            choice["finish_reason"] = choice["finish_reason"] or "stop"
    chunks = [Completion.model_validate(chunk) for chunk in raw]
    finish_given = [json.loads(p)["choices"][0]["finish_reason"] for p in payloads[:-2]]
    text = {0: "", 1: ""}
    finishes = []
    for chunk, given in zip(chunks[:-1], finish_given, strict=True):
        choice = chunk.choices[0]
        text[choice.index] += choice.text
        if given:
            finishes.append((choice.index, given))
    assert text == {0: "tok0 tok1 ", 1: "tok0 tok1 "}
    assert finishes == [(0, "length"), (1, "length")]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_a_later_prompt_too_long_is_refused_before_the_stream(client: TestClient, stream: bool) -> None:
    body = {"model": "m", "prompt": ["short", "word " * 100], "stream": stream}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert response.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": 1, "echo": True}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"n": 17}, "n"),
        ({"prompt": [[1, 2, 3]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"logit_bias": {"one": 2}}, "logit_bias"),
        ({"logit_bias": {"1": 200}}, "logit_bias.1"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"echo": "yes"}, "echo"),
    ],
)
def test_completion_refusals_name_the_field(client: TestClient, extra: dict[str, Any], param: str) -> None:
    response = client.post("/v1/completions", json={"model": "m", "prompt": "hi", **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_tokenize_and_detokenize(client: TestClient) -> None:
    tokens = client.post("/extras/tokenize", json={"model": "m", "input": "red green red"}).json()
    red, green, again = tokens.pop("tokens")
    assert tokens == {"model": "m", "count": 3} and red == again != green
    text = client.post("/extras/detokenize", json={"model": "m", "tokens": [green, red]}).json()
    assert text == {"model": "m", "text": "green red "}  # the fake's pieces are words with a space
    assert client.post("/extras/tokenize", json={"model": "nope", "input": "x"}).status_code == 404
    bad = client.post("/extras/detokenize", json={"model": "m", "tokens": ["x"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[0]"
