"""Remote models (`upstream:` entries) on a mock network: pass-through, failover before the first byte,
circuit breakers, in-band errors after it, metrics. tests/real/test_real_upstream.py does it for real."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.errors import ConfigError
from gateway.observability.metrics import Metrics
from gateway.testing.fakeworker import FakeWorkers
from gateway.upstream.breaker import Circuit, CircuitBreaker
from gateway.upstream.proxy import Upstreams
from gateway.web.app import create_app

MSG = [{"role": "user", "content": "hi"}]
A, B = "http://a.test/v1", "http://b.test/v1"


class Network:
    """Answers per host; records what each host was sent."""

    def __init__(self) -> None:
        self.hosts: dict[str, Callable[[httpx.Request], Any]] = {}
        self.sent: list[tuple[str, dict[str, Any], httpx.Headers]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.url.host, json.loads(request.content), request.headers))
        answer = self.hosts[request.url.host](request)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    def count(self, host: str) -> int:
        return sum(1 for h, _, _ in self.sent if h == host)


def completion(model: str = "remote-name") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        },
    )


def sse(*events: str, fail: Exception | None = None) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield f"data: {event}\n\n".encode()
        if fail is not None:
            raise fail

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def chunk(text: str, finish: str | None = None) -> str:
    return json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "remote-name",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        }
    )


@pytest.fixture
def network() -> Network:
    return Network()


@pytest.fixture
def gateway(make_config: Any, tmp_path: Path, network: Network) -> Callable[..., TestClient]:
    def start(servers: list[dict[str, Any]], **entry: Any) -> TestClient:
        doc = make_config({"local": {}})
        doc["models"]["remote"] = {"aliases": ["far"], "upstream": servers, **entry}
        settings = parse_settings(doc, tmp_path, environ={"KEY": "sekret-key"})
        app = create_app(settings, spawn=FakeWorkers().spawn, upstream_transport=httpx.MockTransport(network))
        return TestClient(app)

    return start


def samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_breaker_opens_cools_down_and_trials_once() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown=10, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow() and breaker.state is Circuit.CLOSED
    breaker.failed()
    assert breaker.state is Circuit.OPEN and not breaker.allow() and breaker.retry_after() == 10
    now[0] = 10
    assert breaker.allow() and breaker.state is Circuit.HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.failed()  # the trial failed: open again at once
    assert breaker.state is Circuit.OPEN and not breaker.allow()
    now[0] = 20
    assert breaker.allow()
    breaker.release()  # the trial's client left: the next request may try
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is Circuit.CLOSED and breaker.allow()


def test_upstream_entries_in_models_yaml(make_config: Any, tmp_path: Path) -> None:
    doc = make_config({"local": {}})
    doc["models"]["one"] = {"upstream": {"base_url": A, "api_key": "${KEY}", "timeout": "2m"}}
    doc["models"]["two"] = {"upstream": [{"base_url": A, "model": "x"}, {"base_url": B}]}
    doc["gateway"] = {"api_keys": [{"id": "k", "key": "12345678", "models": ["two"]}]}
    settings = parse_settings(doc, tmp_path, environ={"KEY": "sekret"})
    assert set(settings.models) == {"local"} and set(settings.upstreams) == {"one", "two"}
    assert settings.upstreams["one"].upstream[0].api_key == "sekret"
    assert settings.upstreams["one"].upstream[0].timeout == 120
    assert [s.model for s in settings.upstreams["two"].upstream] == ["x", None]
    bad = make_config({"local": {}})
    bad["models"]["one"] = {"upstream": {"base_url": A, "timout": 1}}
    with pytest.raises(ConfigError, match=r"models\.one\.upstream\.0\.timout: unknown key"):
        parse_settings(bad, tmp_path)
    bad["models"]["one"] = {"upstream": {"base_url": A}, "aliases": ["local"]}
    with pytest.raises(ConfigError, match="already used"):
        parse_settings(bad, tmp_path)
    with pytest.raises(ConfigError, match="KEY is not set"):
        parse_settings(doc, tmp_path, environ={})


def test_chat_passes_through_with_our_model_id(gateway: Any, network: Network) -> None:
    network.hosts["a.test"] = lambda r: completion()
    with gateway([{"base_url": A, "api_key": "${KEY}", "model": "remote-name"}]) as client:
        response = client.post("/v1/chat/completions", json={"model": "far", "messages": MSG, "temperature": 0.5})
        assert response.status_code == 200
        assert response.json()["model"] == "remote" and response.json()["choices"][0]["message"]["content"] == "hello"
        host, body, headers = network.sent[0]
        assert host == "a.test"
        assert body == {"model": "remote-name", "messages": MSG, "temperature": 0.5}
        assert headers["authorization"] == "Bearer sekret-key" and headers["x-request-id"]
        ids = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        assert ids["remote"]["status"] == {"value": "loaded"} and ids["remote"]["aliases"] == ["far"]
        assert client.get("/v1/models/far").json()["id"] == "remote"
        assert samples(client, "gateway_completion_tokens_total") == {(("model", "remote"),): 1.0}


def test_validation_happens_here_first(gateway: Any, network: Network) -> None:
    with gateway([{"base_url": A}]) as client:
        response = client.post("/v1/chat/completions", json={"model": "remote", "messages": [{"role": "robot"}]})
        assert response.status_code == 400 and response.json()["error"]["param"].startswith("messages")
        tokenize = client.post("/extras/tokenize", json={"model": "remote", "input": "x"})
        assert tokenize.status_code == 400 and tokenize.json()["error"]["param"] == "model"
    assert network.sent == []


def test_failover_on_connect_errors_5xx_and_timeouts(gateway: Any, network: Network) -> None:
    network.hosts["b.test"] = lambda r: completion()
    for failure in (httpx.ConnectError("refused"), httpx.Response(503, text="busy"), httpx.ReadTimeout("slow")):
        network.hosts["a.test"] = lambda r, f=failure: f  # type: ignore[misc]
        with gateway([{"base_url": A}, {"base_url": B}], breaker={"failures": 100}) as client:
            response = client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG})
            assert response.status_code == 200, response.text
            outcomes = samples(client, "gateway_upstream_requests_total")
            assert outcomes[(("model", "remote"), ("outcome", "ok"), ("upstream", B))] == 1
    assert network.count("a.test") == network.count("b.test") == 3


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (httpx.ConnectError("refused"), 502, "upstream_failed"),
        (httpx.Response(500, text="oops"), 502, "upstream_failed"),
        (httpx.ConnectTimeout("slow"), 504, "upstream_timeout"),
    ],
)
def test_when_every_server_fails(gateway: Any, network: Network, failure: Any, status: int, code: str) -> None:
    network.hosts["a.test"] = network.hosts["b.test"] = lambda r: failure
    with gateway([{"base_url": A}, {"base_url": B}]) as client:
        response = client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG, "stream": True})
        assert response.status_code == status
        error = response.json()["error"]
        assert (
            error["code"] == code
            and error["type"] == "server_error"
            and set(error)
            == {
                "message",
                "type",
                "param",
                "code",
            }
        )
        assert "a.test" in error["message"] and "b.test" in error["message"]


def test_client_errors_are_relayed_not_failed_over(gateway: Any, network: Network) -> None:
    missing = {"error": {"message": "no such model", "type": "invalid_request_error", "param": "model", "code": "x"}}
    network.hosts["a.test"] = lambda r: httpx.Response(404, json=missing)
    network.hosts["b.test"] = lambda r: httpx.Response(429, text="slow down", headers={"Retry-After": "7"})
    with gateway([{"base_url": A}]) as client:
        response = client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG})
        assert response.status_code == 404 and response.json() == missing
    with gateway([{"base_url": B}, {"base_url": A}]) as client:
        response = client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG})
        assert response.status_code == 429 and response.headers["retry-after"] == "7"
        assert response.json()["error"]["message"].endswith("slow down")
    assert network.count("a.test") == 1


def test_circuit_breaker_skips_a_failing_server(gateway: Any, network: Network) -> None:
    network.hosts["a.test"] = lambda r: httpx.ConnectError("refused")
    network.hosts["b.test"] = lambda r: completion()
    with gateway([{"base_url": A}, {"base_url": B}], breaker={"failures": 2, "cooldown": "1h"}) as client:
        for _ in range(5):
            assert client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG}).status_code == 200
        assert network.count("a.test") == 2 and network.count("b.test") == 5
        circuits = samples(client, "gateway_upstream_circuit_open")
        assert circuits == {(("model", "remote"), ("upstream", A)): 1.0, (("model", "remote"), ("upstream", B)): 0.0}
        network.hosts["b.test"] = lambda r: httpx.ConnectError("refused")
        client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG})
        client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG})
        response = client.post("/v1/chat/completions", json={"model": "remote", "messages": MSG})
        assert response.status_code == 503 and response.json()["error"]["code"] == "upstream_unavailable"
        assert int(response.headers["retry-after"]) > 3000


def stream_lines(client: TestClient, body: dict[str, Any]) -> list[str]:
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_streams_are_relayed_with_our_model_id(gateway: Any, network: Network) -> None:
    network.hosts["a.test"] = lambda r: sse(chunk("he"), chunk("llo", "stop"), "[DONE]")
    with gateway([{"base_url": A}]) as client:
        lines = stream_lines(client, {"model": "remote", "messages": MSG, "stream": True})
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(x) for x in lines[:-1]]
        assert [c["model"] for c in chunks] == ["remote", "remote"]
        assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "hello"
        assert network.sent[0][2]["accept"] == "text/event-stream"


def test_failure_before_the_first_byte_fails_over_after_it_is_in_band(gateway: Any, network: Network) -> None:
    network.hosts["a.test"] = lambda r: sse(fail=httpx.ReadError("reset"))  # breaks before any event
    network.hosts["b.test"] = lambda r: sse(chunk("par"), chunk("tial"), fail=httpx.RemoteProtocolError("closed"))
    with gateway([{"base_url": A}, {"base_url": B}]) as client:
        lines = stream_lines(client, {"model": "remote", "messages": MSG, "stream": True})
        assert [json.loads(x)["choices"][0]["delta"]["content"] for x in lines[:2]] == ["par", "tial"]
        error = json.loads(lines[2])["error"]
        assert error["code"] == "upstream_failed" and "b.test" in error["message"]
        assert lines[3:] == ["[DONE]"]
        outcomes = samples(client, "gateway_upstream_requests_total")
        assert outcomes[(("model", "remote"), ("outcome", "connect_error"), ("upstream", A))] == 1
        assert outcomes[(("model", "remote"), ("outcome", "broken"), ("upstream", B))] == 1
        network.hosts["b.test"] = lambda r: sse(chunk("x"), fail=httpx.ReadTimeout("stalled"))
        lines = stream_lines(client, {"model": "remote", "messages": MSG, "stream": True})
        assert json.loads(lines[1])["error"]["code"] == "upstream_timeout" and lines[2:] == ["[DONE]"]


def test_queue_limit_applies_to_remote_models(gateway: Any, network: Network) -> None:
    network.hosts["a.test"] = lambda r: sse(chunk("a"), chunk("b", "stop"), "[DONE]")
    with gateway([{"base_url": A}], max_queue=1) as client:
        body = {"model": "remote", "messages": MSG, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            second = client.post("/v1/chat/completions", json=body)
            assert second.status_code == 429 and second.json()["error"]["code"] == "queue_full"
            first.read()
        assert len(stream_lines(client, body)) == 3  # the slot was given back


def test_completions_and_embeddings_pass_through(gateway: Any, network: Network) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/embeddings"):
            vector = {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}
            usage = {"prompt_tokens": 1, "total_tokens": 1}
            return httpx.Response(200, json={"object": "list", "data": [vector], "model": "e", "usage": usage})
        choice = {"index": 0, "text": "!", "finish_reason": "stop", "logprobs": None}
        return httpx.Response(200, json={"object": "text_completion", "model": "c", "choices": [choice]})

    network.hosts["a.test"] = answer
    with gateway([{"base_url": A}]) as client:
        done = client.post("/v1/completions", json={"model": "remote", "prompt": "hi"})
        assert done.json()["model"] == "remote" and done.json()["choices"][0]["text"] == "!"
        vectors = client.post("/v1/embeddings", json={"model": "remote", "input": "hi"})
        assert vectors.json()["model"] == "remote" and vectors.json()["data"][0]["embedding"] == [1.0, 0.0]
    assert [(body.get("prompt"), body.get("input")) for _, body, _ in network.sent] == [("hi", None), (None, "hi")]


@pytest.mark.anyio
async def test_a_stream_never_iterated_still_frees_its_slot(make_config: Any, tmp_path: Path, network: Network) -> None:
    network.hosts["a.test"] = lambda r: sse(chunk("a"), "[DONE]")
    doc = make_config({"local": {}})
    doc["models"]["remote"] = {"upstream": {"base_url": A}, "max_queue": 1}
    settings = parse_settings(doc, tmp_path)
    upstreams = Upstreams(settings, Metrics(), httpx.MockTransport(network))
    reply = await upstreams.forward("remote", "chat/completions", {"messages": MSG}, stream=True)
    assert reply.events is not None and reply.close is not None
    assert upstreams.models["remote"].in_flight == 1
    await reply.close()  # what the response's background task does when the client left early
    await reply.close()
    assert upstreams.models["remote"].in_flight == 0
    await upstreams.close()
