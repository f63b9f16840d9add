"""Two real gateway processes sharing PostgreSQL (usage ledger, stored Responses) and Redis (rate
limits), as replicas behind a Service do; the connection to both cut mid-run through a TCP proxy the
test controls, then restored. Needs the servers of tests/servers.py (skipped where absent, failed
under CI=true)."""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai import OpenAI

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer
from tests.servers import REDIS, TcpProxy, with_schema

pytestmark = pytest.mark.real

KEY = "replica-key-123456"
UNLIMITED = "unlimited-key-1234"  # for the last request: the shared window of KEY is full again once Redis is back
ADMIN = "admin-key-123456"


def eventually(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def usage(server: GatewayServer) -> dict[str, int]:
    rows = httpx.get(
        f"{server.base_url}/admin/usage?group_by=key",
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=CLIENT_TIMEOUT,
    ).json()["data"]
    return {row["key"]: row["requests"] for row in rows}


def test_two_gateways_share_state_and_survive_its_outage(tmp_path: Path, pg_schema: str, redis_key_prefix: str) -> None:
    pg, redis = TcpProxy(("127.0.0.1", 5432)), TcpProxy(("127.0.0.1", 6379))
    config = {
        "gateway": {
            "memory_budget": "1GiB",
            "api_keys": [{"id": "replica", "key": KEY, "rpm": 6}, {"id": "other", "key": UNLIMITED}],
            "admin_key": ADMIN,
            "store": with_schema(f"postgresql://127.0.0.1:{pg.port}/test", pg_schema),
            "shared_limits": f"redis://127.0.0.1:{redis.port}/0",
            "shared_limits_prefix": redis_key_prefix,
        },
        "models": {"smollm2": model(SMOLLM)},
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = GatewayServer(config, tmp_path / "a")
    b = GatewayServer(config, tmp_path / "b")
    try:
        for server in (a, b):  # loaded first: the key's requests below fall within one minute on a busy machine
            load = f"{server.base_url}/admin/models/smollm2/load"
            assert httpx.post(load, headers={"authorization": f"Bearer {ADMIN}"}, timeout=CLIENT_TIMEOUT).is_success
        ca, cb = (
            OpenAI(base_url=f"{s.base_url}/v1", api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT) for s in (a, b)
        )
        # A follow-up on the other replica finds the response the first one stored.
        first = ca.responses.create(model="smollm2", input="Say hello.", max_output_tokens=8)
        follow = cb.responses.create(
            model="smollm2", input="Again.", previous_response_id=first.id, max_output_tokens=8
        )
        # (answered, whole or cut at max_output_tokens: an unknown previous_response_id is a 404)
        assert follow.status in ("completed", "incomplete") and follow.output_text
        assert follow.previous_response_id == first.id and cb.responses.retrieve(first.id).id == first.id
        # One rpm for the key across both: 3 requests so far, 3 more fit, the 7th does not.
        for client in (ca, cb, ca):
            client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        with pytest.raises(openai.RateLimitError) as refused:
            cb.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert refused.value.code == "rate_limit_exceeded"
        assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert eventually(lambda: usage(a) == {"replica": 5}) and usage(b) == {"replica": 5}

        # Redis goes away: the replica counts the key's requests on its own (a fresh window). Then
        # PostgreSQL goes away while a stream runs: it finishes, and so do new requests.
        redis.cut()
        stream = ca.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Count to ten."}], max_tokens=32, stream=True
        )
        chunks = iter(stream)
        next(chunks)
        pg.cut()
        assert [c for c in chunks if c.choices][-1].choices[0].finish_reason in ("stop", "length")
        for _ in range(2):
            ca.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        degraded = {"store", "shared_limits"}
        assert eventually(lambda: set(httpx.get(f"{a.base_url}/health").json().get("degraded", [])) == degraded)
        health = httpx.get(f"{a.base_url}/health", timeout=CLIENT_TIMEOUT).json()
        assert health["status"] == "ok" and health["usage_rows_pending"] == 3

        # Back: the spilled rows are written (each once), and a SIGTERM writes what is left.
        pg.restore()
        redis.restore()
        assert eventually(lambda: usage(b).get("replica") == 8)
        other = OpenAI(base_url=f"{a.base_url}/v1", api_key=UNLIMITED, max_retries=0, timeout=CLIENT_TIMEOUT)
        other.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert a.stop(signal.SIGTERM) == 0
        assert usage(b) == {"replica": 8, "other": 1}
    finally:
        a.stop()
        b.stop()
        pg.close()
        redis.close()


class SlowUpstream:
    """An OpenAI-compatible server for a remote model: answers a chat with usage (reasoning and cached
    tokens in its details), streamed as a few chunks `delay` apart."""

    def __init__(self, delay: float = 0.2) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                usage = {
                    "prompt_tokens": 7,
                    "completion_tokens": 5,
                    "total_tokens": 12,
                    "prompt_tokens_details": {"cached_tokens": 1},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                }
                base = {"id": "chatcmpl-up", "created": 1, "model": "up"}
                if not body.get("stream"):
                    message = {"role": "assistant", "content": "hello"}
                    answer = {**base, "object": "chat.completion", "usage": usage}
                    answer["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
                    data = json.dumps(answer).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for i in range(5):
                    delta = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                    chunk = {**base, "object": "chat.completion.chunk", "choices": [delta]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(delay)
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                last = {**base, "object": "chat.completion.chunk", "choices": [end], "usage": usage}
                self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def ledger(server: GatewayServer) -> dict[str, int]:
    answer = httpx.get(
        f"{server.base_url}/admin/usage", headers={"authorization": f"Bearer {ADMIN}"}, timeout=CLIENT_TIMEOUT
    )
    rows = answer.json()["data"] if answer.status_code == 200 else []
    return dict(rows[0]) if rows else {}


def test_two_gateway_processes_share_limits_and_ledger_of_a_remote_model(
    tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> None:
    """The same on a remote model (no llama.cpp): limits across processes, the ledger's reasoning and
    cached tokens from the upstream's usage, an outage mid-stream, the spill replayed, SIGTERM."""
    pg, redis, upstream = TcpProxy(("127.0.0.1", 5432)), TcpProxy(("127.0.0.1", 6379)), SlowUpstream()
    config = {
        "gateway": {
            "api_keys": [{"id": "replica", "key": KEY, "rpm": 3}],
            "admin_key": ADMIN,
            "store": with_schema(f"postgresql://127.0.0.1:{pg.port}/test", pg_schema),
            "shared_limits": f"redis://127.0.0.1:{redis.port}/0",
            "shared_limits_prefix": redis_key_prefix,
        },
        "models": {"remote": {"upstream": {"base_url": upstream.base_url}}},
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = GatewayServer(config, tmp_path / "a")
    b = GatewayServer(config, tmp_path / "b")
    hi = [{"role": "user", "content": "Hi"}]
    try:
        ca, cb = (
            OpenAI(base_url=f"{s.base_url}/v1", api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT) for s in (a, b)
        )
        for client in (ca, cb, ca):
            assert client.chat.completions.create(model="remote", messages=hi).usage is not None
        with pytest.raises(openai.RateLimitError) as refused:
            cb.chat.completions.create(model="remote", messages=hi)
        assert refused.value.code == "rate_limit_exceeded"
        assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert eventually(lambda: ledger(b).get("requests") == 3)
        assert ledger(b) == {
            "requests": 3,
            "prompt_tokens": 21,
            "completion_tokens": 15,
            "reasoning_tokens": 6,
            "cached_tokens": 3,
        }

        # Redis goes away (the replica counts on its own: a fresh window), then PostgreSQL mid-stream.
        redis.cut()
        stream = ca.chat.completions.create(model="remote", messages=hi, stream=True)
        chunks = iter(stream)
        next(chunks)
        pg.cut()
        assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"
        ca.chat.completions.create(model="remote", messages=hi)
        degraded = {"store", "shared_limits"}
        assert eventually(lambda: set(httpx.get(f"{a.base_url}/health").json().get("degraded", [])) == degraded)
        health = httpx.get(f"{a.base_url}/health", timeout=CLIENT_TIMEOUT).json()
        assert health["status"] == "ok" and health["usage_rows_pending"] == 2
        assert 'gateway_state_backend_up{backend="store"} 0.0' in httpx.get(f"{a.base_url}/metrics").text

        # Back, and stopped at once: SIGTERM writes the spilled rows (each once) before the exit. The
        # key's third request of the minute on this replica (its own window while Redis was away).
        ca.chat.completions.create(model="remote", messages=hi)
        pg.restore()
        redis.restore()
        assert a.stop(signal.SIGTERM) == 0
        assert ledger(b)["requests"] == 6 and ledger(b)["reasoning_tokens"] == 12
    finally:
        a.stop()
        b.stop()
        pg.close()
        redis.close()
        upstream.stop()


def test_a_killed_replica_stops_counting_against_max_concurrent(tmp_path: Path, redis_key_prefix: str) -> None:
    """A key may run one request over both replicas: b's waits while a streams one; a is SIGKILLed
    mid-stream (no release, no more heartbeats) and its lease expires, so b's request runs."""
    config = {
        "gateway": {
            "memory_budget": "1GiB",
            "api_keys": [{"id": "solo", "key": KEY, "max_concurrent": 1}],
            "admin_key": ADMIN,
            "shared_limits": REDIS,
            "shared_limits_prefix": redis_key_prefix,
            "shared_limits_lease": 3,  # (heartbeats every second: room for a busy CI machine)
        },
        "models": {"smollm2": model(SMOLLM)},
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = GatewayServer(config, tmp_path / "a")
    b = GatewayServer(config, tmp_path / "b")
    admin = {"authorization": f"Bearer {ADMIN}"}
    workers = []
    try:
        assert httpx.post(f"{b.base_url}/admin/models/smollm2/load", headers=admin, timeout=CLIENT_TIMEOUT).is_success
        ca, cb = (
            OpenAI(base_url=f"{s.base_url}/v1", api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT) for s in (a, b)
        )
        long = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
        stream = ca.chat.completions.create(model="smollm2", messages=long, max_tokens=400, stream=True, temperature=0)
        chunks = iter(stream)
        next(chunks)
        workers = a.worker_pids()
        answer: dict[str, Any] = {}

        def ask_b() -> None:
            hi = [{"role": "user", "content": "Hi"}]
            answer["b"] = cb.chat.completions.create(model="smollm2", messages=hi, max_tokens=4)

        asker = threading.Thread(target=ask_b, daemon=True)
        asker.start()

        def queued_on_b() -> bool:
            models = httpx.get(f"{b.base_url}/admin/models", headers=admin, timeout=CLIENT_TIMEOUT).json()["models"]
            return [(m["in_flight"], m["queued"]) for m in models] == [(0, 1)]

        assert eventually(queued_on_b)  # the key's one request runs on a
        assert next(chunks).choices[0].finish_reason is None  # and still does
        a.stop(signal.SIGKILL)
        with pytest.raises((openai.APIConnectionError, httpx.HTTPError)):  # a's stream was cut, not finished
            list(chunks)
        asker.join(60)  # (a lease that never expired would keep it waiting)
        assert answer["b"].choices[0].message.content is not None
    finally:
        a.stop()
        b.stop()
        for pid in workers:  # a SIGKILLed gateway's worker exits once its pipe closes; make sure
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
