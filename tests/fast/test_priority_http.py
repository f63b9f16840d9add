"""Priority between keys over HTTP, with the real worker loop over the fake llama.cpp: an interactive
key's request is answered while a batch key's stream holds the only slot (the batch stream is paused,
then resumed with the answer it would have had), service_tier "flex" lowers a request's priority, and
/metrics and /admin/models show who holds the turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

BATCH_KEY, CHAT_KEY, ADMIN = "sk-batch-0001", "sk-chat-00001", "sk-admin-0001"
SCRIPT = FakeScript(reply_tokens=40, step_delay=0.01, sample=True)


@pytest.fixture
def served(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    workers = FakeWorkers({"m": SCRIPT})
    keys = [
        {"id": "eval", "key": BATCH_KEY, "priority": "batch"},
        {"id": "alice", "key": CHAT_KEY},
    ]
    doc = make_config(
        {"m": {"runtime": {"parallel": 1}, "model": {"n_ctx": 128}}},
        gateway={"cpu_threads": 0, "api_keys": keys, "admin_key": ADMIN},
    )
    with TestClient(create_app(parse_settings(doc, tmp_path), spawn=workers.spawn)) as client:
        yield client


BATCH_BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "a long batch job"}],
    "max_tokens": 30,
    "temperature": 0.9,
    "seed": 11,
}


def chat(client: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def test_an_interactive_request_is_served_while_a_batch_stream_holds_the_only_slot(served: TestClient) -> None:
    alone = ChatCompletion.model_validate(chat(served, BATCH_KEY, BATCH_BODY)).choices[0].message.content
    finished: list[str] = []
    streamed: list[str] = []
    started = threading.Event()

    def batch_stream() -> None:
        body = {**BATCH_BODY, "stream": True}
        headers = {"Authorization": f"Bearer {BATCH_KEY}"}
        with served.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply:
            for line in reply.iter_lines():
                if '"content":"tok' in line:
                    started.set()
                    streamed.append(line)
        finished.append("batch")

    thread = threading.Thread(target=batch_stream)
    thread.start()
    assert started.wait(10)
    answer = chat(served, CHAT_KEY, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    finished.append("chat")
    thread.join(30)
    assert finished == ["chat", "batch"]  # the one slot was given to the interactive request
    assert answer["usage"]["completion_tokens"] == 3
    state = served.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert next(m for m in state["models"] if m["id"] == "m")["preemptions"] == 1
    metrics = served.get("/metrics").text
    assert 'gateway_preemptions_total{model="m"} 1.0' in metrics
    # The paused stream's answer is the one it has alone (sampled, seeded: the sampler's state survived).
    text = "".join(line.split('"content":"')[1].split('"')[0] for line in streamed)
    assert text == alone


def test_flex_lowers_a_request_to_batch_and_is_echoed(served: TestClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert chat(served, CHAT_KEY, {**body, "service_tier": "flex"})["service_tier"] == "flex"
    assert chat(served, CHAT_KEY, {**body, "service_tier": "auto"})["service_tier"] == "default"
    assert chat(served, BATCH_KEY, {**body, "service_tier": "priority"})["service_tier"] == "flex"  # never raised
    assert "service_tier" not in chat(served, CHAT_KEY, body)


def test_responses_take_the_service_tier_too(served: TestClient) -> None:
    body = {"model": "m", "input": "hi", "max_output_tokens": 2, "store": False}

    def respond(key: str, extra: dict[str, Any]) -> Response:
        reply = served.post("/v1/responses", json={**body, **extra}, headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        return Response.model_validate(reply.json())

    assert respond(CHAT_KEY, {"service_tier": "flex"}).service_tier == "flex"
    assert respond(BATCH_KEY, {"service_tier": "priority"}).service_tier == "flex"  # never raised
    assert respond(CHAT_KEY, {}).service_tier is None
    streamed = {**body, "service_tier": "flex", "stream": True}
    with served.stream("POST", "/v1/responses", json=streamed, headers={"Authorization": f"Bearer {CHAT_KEY}"}) as r:
        assert '"service_tier":"flex"' in "".join(r.iter_lines())


def test_admin_models_shows_who_holds_the_turns(served: TestClient) -> None:
    holding = threading.Event()

    def batch_stream() -> None:
        headers = {"Authorization": f"Bearer {BATCH_KEY}"}
        with served.stream("POST", "/v1/chat/completions", json={**BATCH_BODY, "stream": True}, headers=headers) as r:
            for _ in r.iter_lines():
                holding.set()

    thread = threading.Thread(target=batch_stream)
    thread.start()
    assert holding.wait(10)
    deadline = time.monotonic() + 5
    keys: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not keys:
        state = served.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        keys = next(m for m in state["models"] if m["id"] == "m")["keys"]
    assert keys == [{"key": "eval", "priority": "batch", "running": 1, "waiting": 0, "paused": 0}]
    metrics = served.get("/metrics").text
    assert 'gateway_key_requests{key="eval",model="m",state="running"} 1.0' in metrics
    assert 'gateway_priority_requests{model="m",priority="batch",state="running"} 1.0' in metrics
    thread.join(30)
