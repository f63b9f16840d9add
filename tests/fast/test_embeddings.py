"""/v1/embeddings over the fake llama.cpp: shapes, encodings, refusals."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types import CreateEmbeddingResponse
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(
        make_config({"chat": {}, "embed": {"embedding": True, "model": {"pooling": "mean"}}}), tmp_path
    )
    with TestClient(create_app(settings, spawn=FakeWorkers().spawn)) as c:
        yield c


def test_float_embeddings(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "embed", "input": ["a b", "c"]})
    result = CreateEmbeddingResponse.model_validate(response.json())
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 64 for d in result.data)
    assert result.usage.prompt_tokens == 3 and result.usage.total_tokens == 3
    assert result.model == "embed"


def test_base64_is_little_endian_float32(client: TestClient) -> None:
    floats = client.post("/v1/embeddings", json={"model": "embed", "input": "a b"}).json()["data"][0]["embedding"]
    encoded = client.post(
        "/v1/embeddings", json={"model": "embed", "input": "a b", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats, rel=1e-6)


@pytest.mark.parametrize("given", [[5, 6, 7], [[5, 6], [7]]])
def test_token_arrays(client: TestClient, given: list[Any]) -> None:
    result = client.post("/v1/embeddings", json={"model": "embed", "input": given}).json()
    assert len(result["data"]) == (1 if isinstance(given[0], int) else 2)
    assert result["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "chat", "input": "x"}, "model"),
        ({"model": "embed", "input": "x", "dimensions": 32}, "dimensions"),
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [[]]}, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "embed", "input": [-1]}, "input"),
    ],
)
def test_embedding_refusals(client: TestClient, body: dict[str, Any], param: str) -> None:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


def test_dimensions_equal_to_the_model_is_fine(client: TestClient) -> None:
    assert client.post("/v1/embeddings", json={"model": "embed", "input": "x", "dimensions": 64}).status_code == 200


def test_embedding_model_refuses_generation(client: TestClient) -> None:
    msg = [{"role": "user", "content": "x"}]
    chat = client.post("/v1/chat/completions", json={"model": "embed", "messages": msg})
    assert chat.status_code == 400 and "embedding model" in chat.json()["error"]["message"]
    text = client.post("/v1/completions", json={"model": "embed", "prompt": "x"})
    assert text.status_code == 400 and text.json()["error"]["param"] == "model"
