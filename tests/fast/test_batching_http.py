"""Over HTTP, with the real worker loop beneath the parent handle (fake llama.cpp in a thread):
concurrent requests share a batch, and /metrics shows the batch for routers and autoscalers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

SCRIPT = FakeScript(reply_tokens=20, step_delay=0.005)


@pytest.fixture
def served(make_config: Any, tmp_path: Path) -> Iterator[tuple[TestClient, FakeWorkers]]:
    workers = FakeWorkers({"m": SCRIPT})
    doc = make_config({"m": {"runtime": {"parallel": 3}, "model": {"n_ctx": 128}}}, gateway={"cpu_threads": 0})
    settings = parse_settings(doc, tmp_path)
    with TestClient(create_app(settings, spawn=workers.spawn)) as client:
        yield client, workers


def gauge(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="m"}} (\S+)$', text, re.M)
    assert match, name
    return float(match.group(1))


def test_concurrent_requests_share_steps_and_metrics_show_the_batch(
    served: tuple[TestClient, FakeWorkers],
) -> None:
    client, workers = served
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0}
    results: list[ChatCompletion] = []

    def ask(i: int) -> None:
        reply = client.post("/v1/chat/completions", json={**body, "max_tokens": 10 + i})
        results.append(ChatCompletion.model_validate(reply.json()))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.usage.completion_tokens for r in results if r.usage) == [10, 11, 12]
    assert all((r.choices[0].message.content or "").startswith("tok0 tok1 tok2 ") for r in results)
    assert max(len({row.seq for row in rows}) for rows in workers.backends[0].decodes) >= 2
    metrics = client.get("/metrics").text
    deadline = time.monotonic() + 10
    while gauge(metrics, "gateway_requests_running") != 0:  # the worker reports its batch after the last token
        assert time.monotonic() < deadline
        metrics = client.get("/metrics").text
    assert gauge(metrics, "gateway_batch_slots") == 3
    assert gauge(metrics, "gateway_requests_waiting") == 0
    assert gauge(metrics, "gateway_kv_cache_usage_ratio") == 0
