"""Every response shape, streamed and not, checked as OpenAI defines it (tests/wire.py: the `openai`
SDK's own types plus strict key checks), over the fake llama.cpp."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests import wire
from tests.ggufgen import chat_and_embedding_doc

MSG = [{"role": "user", "content": "one two"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("schema")
    doc = chat_and_embedding_doc(folder, "m", "e")
    with TestClient(create_app(parse_settings(doc, folder), spawn=FakeWorkers().spawn)) as c:
        yield c


def stream(client: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


@pytest.mark.parametrize(
    "extra",
    [{}, {"n": 2, "logprobs": True, "top_logprobs": 2}, {"tools": TOOLS, "tool_choice": "required"}],
    ids=["plain", "n-logprobs", "tools"],
)
def test_chat(client: TestClient, extra: dict[str, Any]) -> None:
    body = {"model": "m", "messages": MSG, "max_tokens": 3, **extra}
    wire.chat_completion(client.post("/v1/chat/completions", json=body).json())
    chunks = stream(client, "/v1/chat/completions", body)
    for chunk in chunks:
        wire.chat_chunk(chunk)
    assert chunks[-1]["usage"] is not None and chunks[-1]["choices"] == []


def test_completions(client: TestClient) -> None:
    body = {"model": "m", "prompt": ["a", "b"], "max_tokens": 3, "logprobs": 1}
    wire.completion(client.post("/v1/completions", json=body).json())
    chunks = stream(client, "/v1/completions", body)
    for chunk in chunks:
        wire.completion(chunk, streamed=True)
    finished = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finished) == 2  # one per prompt


def test_embeddings_models_and_errors(client: TestClient) -> None:
    for encoding in ("float", "base64"):
        body = {"model": "e", "input": ["a", "b c"], "encoding_format": encoding}
        wire.embeddings(client.post("/v1/embeddings", json=body).json())
    wire.model_list(client.get("/v1/models").json())
    wire.model_card(client.get("/v1/models/m").json())
    assert wire.error(client.post("/v1/chat/completions", json={"model": "nope", "messages": MSG}).json())["param"]
    assert wire.error(client.post("/v1/chat/completions", content=b"{").json())["param"] is None
    assert wire.error(client.get("/v1/nowhere").json())["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"id": "x", "object": "chat.completion", "created": 1, "model": "m"}, r"missing \['choices'\]"),
        ({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [], "extra": 1}, "extra"),
    ],
)
def test_the_strict_checks_catch_what_the_sdk_lets_through(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        wire.keys(body, "body", {"id", "object", "created", "model", "choices"}, {"usage"})
    message = {"role": "assistant", "content": "hi"}  # the SDK accepts it; OpenAI always sends refusal: null
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    with pytest.raises(AssertionError, match="refusal"):
        wire.chat_completion({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]})
