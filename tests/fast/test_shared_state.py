"""Two gateways (fake models) sharing a PostgreSQL store and Redis limits, as replicas do; and what
happens when those servers go away mid-run (through a TCP proxy the test cuts) and come back.

They need the real servers (tests/servers.py): skipped where absent, failed under CI=true."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.servers import POSTGRES, REDIS, TcpProxy, with_schema

KEY = "shared-key-123456"
ADMIN = "admin-key-123456"
AUTH = {"authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}


def replica(
    make_config: Any,
    tmp_path: Path,
    store: str,
    redis: str | None,
    prefix: str,
    *,
    script: FakeScript | None = None,
    **limits: Any,
) -> TestClient:
    """A gateway over one fake model `a` (answering `script`) whose key `KEY` has `limits`."""
    gateway = {
        "api_keys": [{"id": "shared", "key": KEY, **limits}],
        "admin_key": ADMIN,
        "access_log": None,
        "store": store,
        "shared_limits": redis,
        "shared_limits_prefix": prefix,
    }
    settings = parse_settings(make_config({"a": {"model": {"n_ctx": 512}}}, gateway=gateway), tmp_path)
    workers = FakeWorkers({"a": script or FakeScript(reply_tokens=3)})
    return TestClient(create_app(settings, spawn=workers.spawn))


def chat(client: TestClient, **extra: Any) -> Any:
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], **extra}
    return client.post("/v1/chat/completions", json=body, headers=AUTH)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def requests_in_ledger(client: TestClient) -> int:
    rows = client.get("/admin/usage", headers=ADMIN_AUTH).json()["data"]
    return int(rows[0]["requests"]) if rows else 0


@pytest.fixture
def pair(
    make_config: Any, tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> Iterator[tuple[TestClient, TestClient]]:
    store = with_schema(POSTGRES, pg_schema)
    with (
        replica(make_config, tmp_path, store, REDIS, redis_key_prefix, rpm=4) as a,
        replica(make_config, tmp_path, store, REDIS, redis_key_prefix, rpm=4) as b,
    ):
        yield a, b


def test_replicas_share_previous_response_id_usage_and_rate_limits(pair: tuple[TestClient, TestClient]) -> None:
    a, b = pair
    first = a.post("/v1/responses", json={"model": "a", "input": "remember me"}, headers=AUTH)
    assert first.status_code == 200
    follow = b.post(
        "/v1/responses",
        json={"model": "a", "input": "and now?", "previous_response_id": first.json()["id"]},
        headers=AUTH,
    )
    assert follow.status_code == 200, follow.text
    assert b.get(f"/v1/responses/{first.json()['id']}", headers=AUTH).status_code == 200
    # rpm 4 across both replicas: three requests so far (a retrieval counts), one more fits, then none.
    assert chat(b).status_code == 200
    refused = chat(a)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # Each replica's rows reach the one ledger.
    assert eventually(lambda: requests_in_ledger(a) == 3)  # the two answers and the chat
    assert requests_in_ledger(b) == 3


def test_quota_spans_replicas_through_the_ledger(
    make_config: Any, tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> None:
    store = with_schema(POSTGRES, pg_schema)
    quota = {"tokens": 1000, "per": "month"}
    with replica(make_config, tmp_path, store, REDIS, redis_key_prefix, quota=quota) as a:
        used = sum(chat(a).json()["usage"]["total_tokens"] for _ in range(3))
        assert eventually(lambda: requests_in_ledger(a) == 3)
    # Redis forgets the counter (flushed, restarted): it is seeded from the ledger, the truth.
    flushed = redis_lib.Redis.from_url(REDIS)
    assert flushed.delete(*flushed.keys(f"{redis_key_prefix}:shared:quota:*")) == 1
    flushed.close()
    quota = {"tokens": used + 3, "per": "month"}  # the next request's estimate (prompt 1) plus one more
    with replica(make_config, tmp_path, store, REDIS, redis_key_prefix, quota=quota) as b:
        assert chat(b).status_code == 200  # its own 3 replies go over the quota
        over = chat(b)
        assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"


def test_store_and_redis_outage_keep_serving_and_lose_no_usage(
    make_config: Any, tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> None:
    pg_proxy, redis_proxy = TcpProxy(("127.0.0.1", 5432)), TcpProxy(("127.0.0.1", 6379))
    store = with_schema(f"postgresql://127.0.0.1:{pg_proxy.port}/test", pg_schema)
    redis = f"redis://127.0.0.1:{redis_proxy.port}/0"
    try:
        with replica(make_config, tmp_path, store, redis, redis_key_prefix, rpm=1000) as client:
            assert chat(client).status_code == 200
            assert eventually(lambda: requests_in_ledger(client) == 1)
            pg_proxy.cut()
            redis_proxy.cut()
            served = [chat(client) for _ in range(5)]
            assert [r.status_code for r in served] == [200] * 5
            assert served[-1].headers["x-ratelimit-limit-requests"] == "1000"  # counted per replica meanwhile
            assert eventually(
                lambda: set(client.get("/health").json().get("degraded", [])) == {"store", "shared_limits"}
            )
            health = client.get("/health").json()
            assert health["status"] == "ok" and health["usage_rows_pending"] == 5
            metrics = client.get("/metrics").text
            assert 'gateway_state_backend_up{backend="store"} 0.0' in metrics
            assert 'gateway_state_backend_up{backend="shared_limits"} 0.0' in metrics
            # Stored responses need the store: the API says so (503), and the request is still counted.
            stored = client.post("/v1/responses", json={"model": "a", "input": "hi"}, headers=AUTH)
            assert stored.status_code == 503 and stored.json()["error"]["code"] == "store_unavailable"
            pg_proxy.restore()
            redis_proxy.restore()
            sent = 7

            def recovered() -> bool:  # Redis is tried again on a request, the store on the next write
                nonlocal sent
                assert chat(client).status_code == 200
                sent += 1
                return client.get("/health").json().get("degraded") is None

            assert eventually(recovered, timeout=60)
            # The spilled rows were replayed, each once.
            assert eventually(lambda: requests_in_ledger(client) == sent)
    finally:
        pg_proxy.close()
        redis_proxy.close()
