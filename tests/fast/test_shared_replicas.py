"""What replicas count together in Redis beyond rate windows: a key's running requests
(`max_concurrent`, as leases that expire when their replica dies) and its quota with reservations
(no overshoot by what two replicas admit at once); and a gateway that starts while its PostgreSQL is
unreachable. Real PostgreSQL and Redis (tests/servers.py): skipped where absent, failed under CI=true."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from gateway.access.keys import Principal
from gateway.access.leases import SharedLeases
from gateway.access.limits import Limiter, period_bounds
from gateway.access.link import RedisLink
from gateway.access.quotas import SharedQuotas
from gateway.access.shared import SharedCounters
from gateway.config.settings import Quota
from gateway.testing.fakellama import FakeScript
from tests.fast.test_shared_state import (
    ADMIN_AUTH,
    AUTH,
    chat,
    eventually,
    replica,
    requests_in_ledger,
)
from tests.servers import POSTGRES, REDIS, TcpProxy, with_schema

SLOW = FakeScript(reply_tokens=12, step_delay=0.1)  # a stream long enough for another request to meet it


def stream_first_chunk(client: TestClient, done: threading.Event, **extra: Any) -> threading.Thread:
    """A streamed chat on `client`, read in a thread until it ends (then `done` is set); returns
    once its first chunk has come, so the request is running."""
    started = threading.Event()

    def run() -> None:
        body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
        with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    started.set()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)
    return thread


def model_state(client: TestClient) -> tuple[int, int]:
    """Model `a`'s running and queued requests on this replica."""
    (model,) = [m for m in client.get("/admin/models", headers=ADMIN_AUTH).json()["models"] if m["id"] == "a"]
    return model["in_flight"], model["queued"]


def test_max_concurrent_counts_a_keys_requests_on_every_replica(
    make_config: Any, tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> None:
    store = with_schema(POSTGRES, pg_schema)
    with (
        replica(make_config, tmp_path, store, REDIS, redis_key_prefix, script=SLOW, max_concurrent=1) as a,
        replica(make_config, tmp_path, store, REDIS, redis_key_prefix, script=SLOW, max_concurrent=1) as b,
    ):
        assert chat(b, max_tokens=1).status_code == 200  # b's model is loaded: what waits below waits for the key
        first_done = threading.Event()
        first = stream_first_chunk(a, first_done)
        second: dict[str, Any] = {}

        def ask_b() -> None:
            second["answer"] = chat(b, max_tokens=1)
            second["after_first"] = first_done.is_set()

        asker = threading.Thread(target=ask_b, daemon=True)
        asker.start()
        # The key runs one request, on a: b's waits in its queue (as a local over-limit request does).
        assert eventually(lambda: model_state(b) == (0, 1))
        first.join(30)
        asker.join(30)
        assert second["answer"].status_code == 200 and second["after_first"]


def test_quota_reservations_are_shared_so_replicas_cannot_overshoot(
    make_config: Any, tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> None:
    store = with_schema(POSTGRES, pg_schema)
    # Each request reserves its prompt (2) and max_tokens (200): one fits the quota, two at once do not.
    quota = {"tokens": 300, "per": "day"}
    with (
        replica(make_config, tmp_path, store, REDIS, redis_key_prefix, script=SLOW, quota=quota) as a,
        replica(make_config, tmp_path, store, REDIS, redis_key_prefix, script=SLOW, quota=quota) as b,
    ):
        done = threading.Event()
        running = stream_first_chunk(a, done, max_tokens=200)
        over = chat(b, max_tokens=200)
        assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"
        assert "202 used or reserved" in over.json()["error"]["message"]
        running.join(30)
        # Settled to what it used (far less than reserved): room again, on either replica.
        assert eventually(lambda: chat(b, max_tokens=200).status_code == 200, timeout=10)
        assert eventually(lambda: requests_in_ledger(a) == 2)


def test_quota_counter_gives_back_what_a_refused_or_settled_request_reserved(redis_key_prefix: str) -> None:
    """Against the shared counter: a request the rate limit refuses keeps no reservation; a settle that
    Redis missed (away) is applied when it answers again, before the next reservation."""
    proxy = TcpProxy(("127.0.0.1", 6379))

    async def run() -> None:
        link = RedisLink(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_key_prefix, retry=0.1)
        quotas = SharedQuotas(link)

        async def ledger_total(key_id: str = "q", since: float = 0.0) -> int:
            return 5  # what the usage ledger has of the key this period

        limiter = Limiter(SharedCounters(link), used_since=ledger_total, quotas=quotas)
        key = Principal("q", None, rpm=1, quota=Quota(tokens=100, per="day"))

        start, end = period_bounds("day", time.time())
        counter = link.key("q", f"quota:{int(start)}")
        admitted = await limiter.admit(key, 40)
        assert admitted.ticket is not None and await link.redis.get(counter) == b"45"  # seeded: 5 + 40
        refused = await limiter.admit(key, 40)
        assert refused.error is not None and refused.error.code == "rate_limit_exceeded"
        for _ in range(100):  # its 40 given back (in the background)
            if await link.redis.get(counter) == b"45":
                break
            await asyncio.sleep(0.05)
        assert await link.redis.get(counter) == b"45"
        proxy.cut()
        limiter.settle(admitted.ticket, 10)  # used 10 of the 40: Redis misses it
        while link.healthy:
            await asyncio.sleep(0.05)
        proxy.restore()
        await asyncio.sleep(0.2)  # past the retry delay
        again = await quotas.reserve("q", start, end, 100, 1, ledger_total)
        assert again is not None and again.ok and again.used == 5 + 10 + 1
        await link.close()

    try:
        asyncio.run(run())
    finally:
        proxy.close()


def test_quota_counter_is_not_seeded_while_the_ledger_cannot_be_read(redis_key_prefix: str) -> None:
    """A counter seeded without the period's use would hand the key a fresh quota until the period
    ends: while the ledger is away, the replica counts as without Redis and leaves the counter absent."""

    async def run() -> None:
        link = RedisLink(REDIS, prefix=redis_key_prefix)

        async def ledger_away(key_id: str, since: float) -> int:
            raise ConnectionError("the store is unreachable")

        limiter = Limiter(SharedCounters(link), used_since=ledger_away, quotas=SharedQuotas(link))
        key = Principal("u", None, rpm=None, quota=Quota(tokens=100, per="day"))
        admitted = await limiter.admit(key, 40)
        assert admitted.ticket is not None and admitted.ticket.quota_counter is None
        assert await link.redis.keys(f"{redis_key_prefix}:u:quota:*") == [] and link.healthy
        await link.close()

    asyncio.run(run())


HOLDER = """
import asyncio, sys
from gateway.access.keys import Principal
from gateway.access.leases import SharedLeases
from gateway.access.limits import Limiter, period_bounds
from gateway.access.link import RedisLink
from gateway.access.quotas import SharedQuotas
from gateway.access.shared import SharedCounters
from gateway.config.settings import Quota

async def main():
    leases = SharedLeases(RedisLink(sys.argv[1], prefix=sys.argv[2]), ttl=2.0)
    assert await leases.acquire("k", 1)
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_leases_of_a_killed_replica_expire(redis_key_prefix: str) -> None:
    """A process holds the key's one lease, kept alive by its heartbeat past the lease's 2 s; SIGKILLed,
    its lease expires and another replica's request runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, REDIS, redis_key_prefix], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        async def other_replica() -> None:
            link = RedisLink(REDIS, prefix=redis_key_prefix)
            leases = SharedLeases(link, ttl=2.0, poll=0.1)
            with pytest.raises(TimeoutError):  # still held past its lifetime: the heartbeat renews it
                await asyncio.wait_for(leases.acquire("k", 1), 3.0)
            holder.kill()
            holder.wait()
            lease = await asyncio.wait_for(leases.acquire("k", 1), 10)
            assert lease is not None and link.healthy
            leases.release("k", lease)
            await leases.close()
            await link.close()

        asyncio.run(other_replica())
    finally:
        holder.kill()
        holder.wait()


def test_leases_fall_back_to_the_replica_while_redis_is_away(redis_key_prefix: str) -> None:
    proxy = TcpProxy(("127.0.0.1", 6379))
    proxy.cut()

    async def run() -> None:
        link = RedisLink(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_key_prefix)
        leases = SharedLeases(link)
        assert await leases.acquire("k", 1) is None  # counted by the scheduler alone
        assert not link.healthy
        await link.close()

    try:
        asyncio.run(run())
    finally:
        proxy.close()


def test_gateway_starts_while_postgresql_is_unreachable_and_uses_it_once_it_answers(
    make_config: Any, tmp_path: Path, pg_schema: str, redis_key_prefix: str
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.cut()
    store = with_schema(f"postgresql://127.0.0.1:{proxy.port}/test", pg_schema)
    try:
        with replica(make_config, tmp_path, store, REDIS, redis_key_prefix) as client:
            assert client.get("/health").json()["degraded"] == ["store"]
            assert 'gateway_state_backend_up{backend="store"} 0.0' in client.get("/metrics").text
            assert [chat(client).status_code for _ in range(2)] == [200, 200]
            stored = client.post("/v1/responses", json={"model": "a", "input": "hi"}, headers=AUTH)
            assert stored.status_code == 503 and stored.json()["error"]["code"] == "store_unavailable"
            assert stored.headers["retry-after"] == "5"
            conversation = client.post("/v1/conversations", json={}, headers=AUTH)
            assert conversation.status_code == 503 and conversation.json()["error"]["code"] == "store_unavailable"
            proxy.restore()
            assert eventually(lambda: client.get("/health").json().get("degraded") is None)
            # Migrated on first contact; the rows kept meanwhile written (the 503 above reached a model too).
            assert eventually(lambda: requests_in_ledger(client) == 3)
            answer = client.post("/v1/responses", json={"model": "a", "input": "hi"}, headers=AUTH)
            assert answer.status_code == 200
            assert client.get(f"/v1/responses/{answer.json()['id']}", headers=AUTH).status_code == 200
        with psycopg.connect(with_schema(POSTGRES, pg_schema)) as conn:
            assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (1,)
    finally:
        proxy.close()
