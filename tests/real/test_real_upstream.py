"""Remote models for real: a front gateway whose models.yaml names `upstream` servers, in front of a
second gateway process serving SmolLM2 with llama.cpp, a port nobody listens on, a server that never
answers and one that stalls mid-stream; and a back gateway killed with SIGKILL mid-stream."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer, free_port
from tests.real.stub_server import StubServer

pytestmark = pytest.mark.real
HELLO = [{"role": "user", "content": "Say hello."}]
LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def back_config() -> dict[str, Any]:
    return {
        "gateway": {"spare_workers": 0},
        "models": {
            "smollm2": model(SMOLLM),
            "smollm2-embed": model(SMOLLM, embedding=True, model={"pooling": "mean"}),
        },
    }


def front_config(back: str, dead: str, silent: str, stall: str) -> dict[str, Any]:
    return {
        "gateway": {"spare_workers": 0},
        "models": {
            "remote": {
                "aliases": ["far"],
                "upstream": [
                    {"base_url": dead, "model": "smollm2", "connect_timeout": 2},
                    {"base_url": back, "model": "smollm2", "timeout": CLIENT_TIMEOUT},
                ],
                "breaker": {"failures": 3, "cooldown": "1h"},
            },
            "remote-embed": {"upstream": {"base_url": back, "model": "smollm2-embed"}},
            "silent": {"upstream": {"base_url": silent, "timeout": 1}},
            "stalling": {"upstream": {"base_url": stall, "timeout": 1}},
        },
    }


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    back = GatewayServer(back_config(), tmp_path_factory.mktemp("back"))
    silent, stall = StubServer("silent"), StubServer("stall")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    front = GatewayServer(
        front_config(f"{back.base_url}/v1", dead, silent.base_url, stall.base_url), tmp_path_factory.mktemp("front")
    )
    yield front, back
    front.stop()
    back.stop()
    silent.stop()
    stall.stop()


def sdk(server: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def metric(server: GatewayServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def sse_payloads(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[6:]


def test_chat_completions_and_embeddings_pass_through(servers: tuple[GatewayServer, GatewayServer]) -> None:
    front, back = servers
    settings: dict[str, Any] = {"max_tokens": 12, "temperature": 0, "seed": 7}
    direct = sdk(back).chat.completions.create(model="smollm2", messages=HELLO, **settings)
    relayed = sdk(front).chat.completions.create(model="far", messages=HELLO, **settings)
    assert relayed.model == "remote"
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert relayed.usage is not None and direct.usage is not None
    assert relayed.usage.completion_tokens == direct.usage.completion_tokens

    stream = sdk(front).chat.completions.create(
        model="remote", messages=HELLO, stream=True, stream_options={"include_usage": True}, **settings
    )
    chunks = list(stream)
    assert {c.model for c in chunks} == {"remote"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == direct.usage.completion_tokens

    completion = sdk(front).completions.create(model="remote", prompt="The capital of France is", max_tokens=4)
    assert completion.model == "remote" and completion.choices[0].text

    vectors = sdk(front).embeddings.create(model="remote-embed", input=["a lighthouse", "a keeper"])
    mine = sdk(back).embeddings.create(model="smollm2-embed", input=["a lighthouse", "a keeper"])
    assert vectors.model == "remote-embed" and len(vectors.data) == 2
    assert vectors.data[0].embedding == pytest.approx(mine.data[0].embedding, abs=1e-5)

    # The same validation as for local models, before anything is sent.
    bad = httpx.post(f"{front.base_url}/v1/chat/completions", json={"model": "remote", "messages": "hi"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    unknown = httpx.post(
        f"{front.base_url}/v1/embeddings", json={"model": "remote", "input": "x", "dimensions": 3}, timeout=30
    )
    assert unknown.status_code == 400 and set(unknown.json()["error"]) == {"message", "type", "param", "code"}


def test_dead_server_fails_over_then_its_circuit_opens(servers: tuple[GatewayServer, GatewayServer]) -> None:
    front, _ = servers
    for _ in range(4):
        sdk(front).chat.completions.create(model="remote", messages=HELLO, max_tokens=2)
    dead_failures = metric(front, "gateway_upstream_requests_total", model="remote", outcome="connect_error")
    assert dead_failures == 3  # then the circuit opened: the dead server is no longer tried
    assert metric(front, "gateway_upstream_requests_total", model="remote", outcome="ok") >= 4
    circuits = [
        s
        for f in text_string_to_metric_families(httpx.get(f"{front.base_url}/metrics").text)
        for s in f.samples
        if s.name == "gateway_upstream_circuit_open" and s.labels["model"] == "remote"
    ]
    assert sorted(s.value for s in circuits) == [0.0, 1.0]


def test_a_server_that_never_answers_times_out(servers: tuple[GatewayServer, GatewayServer]) -> None:
    front, _ = servers
    body = {"model": "silent", "messages": HELLO, "stream": True}
    response = httpx.post(f"{front.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert metric(front, "gateway_upstream_requests_total", model="silent", outcome="timeout") == 1


def test_a_stream_that_stalls_ends_with_an_in_band_timeout(servers: tuple[GatewayServer, GatewayServer]) -> None:
    front, _ = servers
    body = {"model": "stalling", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        payloads = list(sse_payloads(response))
    first = json.loads(payloads[0])
    assert first["model"] == "stalling" and first["choices"][0]["delta"]["content"] == "Once"
    assert json.loads(payloads[1])["error"]["code"] == "upstream_timeout"
    assert payloads[2:] == ["[DONE]"]


def test_upstream_killed_mid_stream(fresh_server: Any) -> None:
    back = fresh_server(back_config())
    front = fresh_server({"models": {"remote": {"upstream": {"base_url": f"{back.base_url}/v1", "model": "smollm2"}}}})
    body = {"model": "remote", "messages": LONG, "max_tokens": 400, "stream": True, "temperature": 0}
    payloads: list[str] = []
    killed = threading.Event()
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT) as response:
        assert response.status_code == 200
        for payload in sse_payloads(response):
            payloads.append(payload)
            if len(payloads) == 3 and not killed.is_set():
                back.process.send_signal(signal.SIGKILL)
                killed.set()
    assert killed.is_set()
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "upstream_failed" and error["type"] == "server_error"
    assert all("choices" in json.loads(p) for p in payloads[:-2])
    # The front gateway is fine; the next request finds nobody there and says so before the 200.
    assert httpx.get(f"{front.base_url}/health", timeout=10).status_code == 200
    again = httpx.post(f"{front.base_url}/v1/chat/completions", json=body, timeout=60)
    assert again.status_code == 502 and again.json()["error"]["code"] == "upstream_failed"
