"""Hostile bodies for every endpoint over the fake llama.cpp: property-based (hypothesis) mutations of
valid requests, and the regression corpus of past crashers. Nothing a client sends may be a 5xx or
an error after the 200; every error is in OpenAI's shape; afterwards no model is held and a valid
request is served."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests import corpus, wire
from tests.ggufgen import chat_and_embedding_doc

MSG = [{"role": "user", "content": "one two"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "smollm2",
        "messages": MSG,
        "max_tokens": 3,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "stop": ["x"],
        "logit_bias": {"5": 1},
        "seed": 1,
    },
    "/v1/completions": {"model": "smollm2", "prompt": ["a b", "c"], "max_tokens": 3, "echo": False, "n": 1},
    "/v1/embeddings": {"model": "embed", "input": ["a", "b c"], "encoding_format": "float"},
    "/extras/tokenize": {"model": "smollm2", "input": "a b c"},
    "/extras/detokenize": {"model": "smollm2", "tokens": [1, 2]},
    "/v1/messages": {"model": "smollm2", "max_tokens": 3, "messages": MSG, "stop_sequences": ["x"]},
    "/v1/responses": {"model": "smollm2", "input": "one two", "max_output_tokens": 3},
}
# A 1x1 PNG: image parts in each dialect (the fuzzed model reads no images; a mutated part must still
# never be a 5xx). `#image` marks a variant body for the same endpoint.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
IMAGE_URL = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}}
IMAGE_BLOCK = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
INPUT_IMAGE = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"}
VALID["/v1/chat/completions#image"] = {
    "model": "smollm2",
    "max_tokens": 3,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE_URL]}],
}
VALID["/v1/messages#image"] = {
    "model": "smollm2",
    "max_tokens": 3,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE_BLOCK]}],
}
VALID["/v1/responses#image"] = {
    "model": "smollm2",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, INPUT_IMAGE]}],
}
# Fields to mutate per endpoint: top-level ones and some nested paths.
PATHS: dict[str, list[tuple[str | int, ...]]] = {endpoint: [(key,) for key in body] for endpoint, body in VALID.items()}
PATHS["/v1/chat/completions"] += [
    ("messages", 0, "content"),
    ("messages", 0, "role"),
    ("messages", 0),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"),
    ("tools", 0, "function", "description"),
    ("stream",),
    ("stream_options",),
    ("response_format",),
    ("n",),
    ("top_logprobs",),
]
PATHS["/v1/completions"] += [("prompt", 0), ("stream",), ("logprobs",), ("suffix",), ("best_of",)]
PATHS["/v1/embeddings"] += [("input", 0), ("dimensions",)]
PATHS["/v1/messages"] += [("messages", 0, "content"), ("messages", 0, "role"), ("system",), ("stream",), ("tools",)]
PATHS["/v1/responses"] += [("instructions",), ("stream",), ("tools",), ("text",)]
PATHS["/v1/chat/completions#image"] += [
    ("messages", 0, "content", 1, field, *rest)
    for field, *rest in [("type",), ("image_url",), ("image_url", "url"), ("image_url", "detail")]
]
PATHS["/v1/messages#image"] += [
    ("messages", 0, "content", 1, *path)
    for path in [("type",), ("source",), ("source", "type"), ("source", "media_type"), ("source", "data")]
]
PATHS["/v1/responses#image"] += [
    ("input", 0, "content", 1, *path) for path in [("type",), ("image_url",), ("file_id",), ("detail",)]
]

ODD_TEXT = st.sampled_from(
    ["", " ", "\ud800", "a\udfffb", "\x00", "\u202e", "\ufeff", "é" * 300, "<|im_start|>", "x" * 5000, "²", "-1"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    ODD_TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20,
)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = st.one_of(VALUES, st.integers(min_value=60, max_value=200).map(nested))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    endpoint = draw(st.sampled_from(sorted(VALID)))
    body = json.loads(json.dumps(VALID[endpoint]))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS[endpoint]))
        parent: Any = body
        for part in path[:-1]:
            parent = parent[part] if isinstance(parent, (dict, list)) and _has(parent, part) else None
        if parent is None or not isinstance(parent, (dict, list)):
            continue
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete"]))
        if action == "delete" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif _has(parent, path[-1]) or isinstance(parent, dict):
            parent[path[-1]] = draw(HOSTILE)
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        body[draw(st.text(max_size=10))] = draw(VALUES)  # an unknown field
    raw = json.dumps(body, allow_nan=False).encode()
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        raw = draw(st.sampled_from([b"", b"{", b"[]", b"null", b'{"model": NaN}', raw[: len(raw) // 2], b"\xff\xfe"]))
    return endpoint, raw


def _has(container: Any, key: str | int) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(key, int) and 0 <= key < len(container)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    doc = chat_and_embedding_doc(folder, "smollm2", "embed")
    with TestClient(create_app(parse_settings(doc, folder), spawn=FakeWorkers().spawn)) as c:
        yield c


def send(client: TestClient, endpoint: str, raw: bytes) -> int:
    """Send one body; check the answer is no 5xx, OpenAI-shaped, and decided before the 200."""
    with client.stream("POST", endpoint, content=raw, headers={"content-type": "application/json"}) as response:
        text = "".join(response.iter_text())
    check_answer(endpoint, raw, response.status_code, response.headers["content-type"], text)
    return response.status_code


def check_answer(endpoint: str, raw: bytes, status: int, content_type: str, text: str) -> None:
    """No 5xx; an error in the endpoint's dialect (OpenAI's or Anthropic's shape); a stream without a
    failure after the 200."""
    assert status < 500, (endpoint, raw[:300], text[:500])
    if status >= 400:
        body = json.loads(text)
        if endpoint.startswith("/v1/messages"):  # Anthropic's shape: {"type": "error", "error": {type, message}}
            assert body["type"] == "error" and {"type", "message"} <= body["error"].keys(), body
        else:
            wire.error(body)
    elif content_type.startswith("text/event-stream"):
        if endpoint in ("/v1/messages", "/v1/responses"):  # their own stream events, no [DONE]
            assert "event: error" not in text and "response.failed" not in text, (endpoint, raw[:300], text[-500:])
        else:
            frames = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            assert frames[-1] == "[DONE]"
            assert not any('"error"' in frame[:10] for frame in frames), (endpoint, raw[:300], frames[-2])


def assert_idle_and_serving(client: TestClient) -> None:
    for model in client.get("/admin/models").json()["models"]:
        assert (model["leases"], model["in_flight"], model["queued"]) == (0, 0, 0), model
    assert client.post("/v1/chat/completions", json={"model": "smollm2", "messages": MSG}).status_code == 200
    assert client.post("/v1/embeddings", json={"model": "embed", "input": "a"}).status_code == 200


FUZZ_CASES = 400


def test_hostile_bodies_on_every_endpoint(client: TestClient) -> None:
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)

    @settings(
        max_examples=FUZZ_CASES,
        deadline=None,
        derandomize=True,  # the same cases every run: a failure here is a bug, never a flake
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def run(request: tuple[str, bytes]) -> None:
        endpoint, raw = request
        statuses[endpoint][send(client, endpoint.partition("#")[0], raw)] += 1

    run()
    assert_idle_and_serving(client)
    print("fuzzed statuses by endpoint:", {e: dict(sorted(c.items())) for e, c in sorted(statuses.items())})
    assert sum(sum(c.values()) for c in statuses.values()) >= FUZZ_CASES
    assert all(statuses[e] for e in VALID)  # every endpoint was hit


@pytest.mark.parametrize("case", corpus.cases(), ids=lambda case: case["name"])
def test_regression_corpus(client: TestClient, case: dict[str, Any]) -> None:
    # Exact statuses and codes are checked in the real tier: the fake's tokenizer and vocabulary differ.
    send(client, case["path"], corpus.render(case["body"]).encode())
    assert_idle_and_serving(client)
