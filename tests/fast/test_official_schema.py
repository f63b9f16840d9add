"""Responses validate against OpenAI's official OpenAPI description (../shared/reference, read at test
time and not copied into the project), converted to JSON Schema: `nullable` becomes a null
alternative and component references point into `$defs`."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_settings
from gateway.engine.fake import FakeEngineFactory

SPEC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.yaml"
MSG = [{"role": "user", "content": "one two"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert(v) for k, v in node.items() if k not in ("nullable", "discriminator", "x-oaiMeta")}
    if isinstance(out.get("required"), list):
        out["required"] = list(dict.fromkeys(out["required"]))  # the spec repeats some names
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _definitions() -> dict[str, Any]:
    assert SPEC.is_file(), f"the official OpenAPI description is expected at {SPEC}"
    with SPEC.open() as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {"$defs": _convert(spec["components"]["schemas"])}


def validate(instance: Any, name: str) -> None:
    schema = {**_definitions(), "$ref": f"#/$defs/{name}"}
    jsonschema.Draft202012Validator(schema).validate(instance)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from tests.ggufgen import write_tiny_gguf

    folder = tmp_path_factory.mktemp("schema")
    doc = {
        "models": {
            "m": {"model": {"path": str(write_tiny_gguf(folder / "m.gguf")), "n_ctx": 64}},
            "e": {
                "embedding": True,
                "model": {"path": str(write_tiny_gguf(folder / "e.gguf")), "n_ctx": 64, "pooling": "mean"},
            },
        }
    }
    with TestClient(create_app(parse_settings(doc, folder), engine_factory=FakeEngineFactory())) as c:
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
    validate(client.post("/v1/chat/completions", json=body).json(), "CreateChatCompletionResponse")
    for chunk in stream(client, "/v1/chat/completions", body):
        validate(chunk, "CreateChatCompletionStreamResponse")


def test_completions(client: TestClient) -> None:
    body = {"model": "m", "prompt": ["a", "b"], "max_tokens": 3, "logprobs": 1}
    validate(client.post("/v1/completions", json=body).json(), "CreateCompletionResponse")
    chunks = stream(client, "/v1/completions", body)
    # The spec has no separate chunk type for this legacy endpoint; its last chunks match it exactly.
    for chunk in chunks:
        if all(choice["finish_reason"] for choice in chunk["choices"]):
            validate(chunk, "CreateCompletionResponse")


def test_embeddings_models_and_errors(client: TestClient) -> None:
    # (The spec types `embedding` as an array only, although OpenAI answers base64 with a string.)
    body = {"model": "e", "input": ["a", "b c"], "encoding_format": "float"}
    validate(client.post("/v1/embeddings", json=body).json(), "CreateEmbeddingResponse")
    validate(client.get("/v1/models").json(), "ListModelsResponse")
    validate(client.get("/v1/models/m").json(), "Model")
    validate(client.post("/v1/chat/completions", json={"model": "nope", "messages": MSG}).json(), "ErrorResponse")
    validate(client.post("/v1/chat/completions", content=b"{").json(), "ErrorResponse")
