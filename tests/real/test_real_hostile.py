"""Hostile input on real models: the regression corpus with its exact answers, each class of it sent
while another client's stream runs on the same model (that stream must finish untouched), and a
smaller property-based fuzz run. No worker may die: the worker processes are the same afterwards."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests import corpus, wire
from tests.fast.test_fuzz import check_answer, requests
from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer

pytestmark = pytest.mark.real

LONG = [{"role": "user", "content": "Repeat the word 'apple' 500 times."}]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    config = {
        # cpu_threads above the cores: requests reach the worker's pipe while another generation runs
        "gateway": {"memory_budget": "2GiB", "spare_workers": 0, "cpu_threads": 64, "max_queue": 64},
        "models": {
            "smollm2": model(SMOLLM),
            "embed": model(SMOLLM, embedding=True, model={"pooling": "mean"}),
        },
    }
    server = GatewayServer(config, Path(tmp_path_factory.mktemp("hostile")))
    yield server
    server.stop()


def post(server: GatewayServer, case: dict[str, Any]) -> tuple[int, str]:
    raw = corpus.render(case["body"]).encode()
    with httpx.stream("POST", f"{server.base_url}{case['path']}", content=raw, timeout=CLIENT_TIMEOUT) as response:
        return response.status_code, "".join(response.iter_text())


def warm(server: GatewayServer) -> list[int]:
    """Load both models; their worker pids."""
    client = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    assert client.post("/v1/completions", json={"model": "smollm2", "prompt": "hi", "max_tokens": 1}).status_code == 200
    assert client.post("/v1/embeddings", json={"model": "embed", "input": "hi"}).status_code == 200
    return sorted(server.worker_pids())


def assert_idle_and_serving(server: GatewayServer, workers: list[int]) -> None:
    client = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    for entry in client.get("/admin/models").json()["models"]:
        assert (entry["leases"], entry["in_flight"], entry["queued"]) == (0, 0, 0), entry
    assert sorted(server.worker_pids()) == workers, "a worker died (or was replaced) on the way"
    assert warm(server) == workers


@pytest.mark.parametrize("case", corpus.cases(), ids=lambda case: case["name"])
def test_regression_corpus_on_real_models(hostile: GatewayServer, case: dict[str, Any]) -> None:
    workers = warm(hostile)
    status, text = post(hostile, case)
    assert status == case["status"], text[:500]
    if status >= 400 and case["path"].startswith("/v1/messages"):  # Anthropic's error shape
        body = json.loads(text)
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    elif status >= 400:
        error = wire.error(json.loads(text))
        assert error["param"] == case.get("param", error["param"])
        assert error["code"] == case.get("code", error["code"])
    elif case["body"].get("stream"):
        frames = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert frames[-1] == "[DONE]" and not any(f.startswith('{"error"') for f in frames)
    assert_idle_and_serving(hostile, workers)


def test_a_stream_survives_every_hostile_request_to_its_model(hostile: GatewayServer) -> None:
    workers = warm(hostile)
    result: dict[str, Any] = {}
    started = threading.Event()

    def stream() -> None:
        body = {
            "model": "smollm2",
            "messages": LONG,
            "max_tokens": 120,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        frames = []
        with httpx.stream(
            "POST", f"{hostile.base_url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    started.set()
        result["frames"] = frames

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(CLIENT_TIMEOUT)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # every class of hostile input, all at once
        answered = collections.Counter(status for status, _ in pool.map(lambda c: post(hostile, c), corpus.cases()))
    thread.join(CLIENT_TIMEOUT)
    frames = result["frames"]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert not [c for c in chunks if "error" in c]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["length"] and chunks[-1]["usage"]["completion_tokens"] == 120  # all of it
    assert answered[500] == 0 and answered[503] == 0
    assert_idle_and_serving(hostile, workers)


REAL_FUZZ_CASES = 60


def test_fuzzing_real_models(hostile: GatewayServer) -> None:
    workers = warm(hostile)
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    client = httpx.Client(base_url=hostile.base_url, timeout=CLIENT_TIMEOUT)

    @settings(
        max_examples=REAL_FUZZ_CASES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def run(request: tuple[str, bytes]) -> None:
        endpoint, raw = request
        response = client.post(endpoint, content=raw, headers={"content-type": "application/json"})
        statuses[endpoint][response.status_code] += 1
        check_answer(endpoint, raw, response.status_code, response.headers["content-type"], response.text)

    run()
    print("real fuzzed statuses by endpoint:", {e: dict(sorted(c.items())) for e, c in sorted(statuses.items())})
    assert_idle_and_serving(hostile, workers)
