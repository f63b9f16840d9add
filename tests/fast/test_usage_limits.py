"""Token limits (tpm, quota) answered as OpenAI does, and the usage ledger behind /admin/usage,
/metrics and the quotas: on the fake workers, with the default SQLite store in tmp_path."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from gateway.access.estimate import estimate
from gateway.access.keys import Principal
from gateway.access.limits import Limiter, duration, period_bounds
from gateway.config import load_settings, parse_settings
from gateway.config.settings import Quota
from gateway.store.database import SqliteDatabase
from gateway.store.ledger import Ledger, UsageRow
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests import servers

KEY = "limited-key-123456"
OTHER = "other-key-1234567"
ADMIN = "admin-key-123456"
MSG = [{"role": "user", "content": "secret prompt words"}]
MSG_ESTIMATE = 6  # ceil(len("user") + len("secret prompt words") / 4)


def make_app(make_config: Any, tmp_path: Path, **limits: Any) -> TestClient:
    gateway = {
        "api_keys": [{"id": "limited", "key": KEY, **limits}, {"id": "other", "key": OTHER}],
        "admin_key": ADMIN,
        "access_log": None,
    }
    settings = parse_settings(make_config({"a": {"model": {"n_ctx": 512}}}, gateway=gateway), tmp_path)
    return TestClient(create_app(settings, spawn=FakeWorkers({"a": FakeScript(reply_tokens=5)}).spawn))


def chat(client: TestClient, key: str = KEY, path: str = "/v1/chat/completions", **extra: Any) -> Any:
    body = {"model": "a", "messages": MSG, **extra}
    return client.post(path, json=body, headers={"authorization": f"Bearer {key}"})


def test_tokens_per_minute_reserve_max_tokens_and_give_back_the_rest(make_config: Any, tmp_path: Path) -> None:
    with make_app(make_config, tmp_path, tpm=100, rpm=10) as client:
        first = chat(client, max_tokens=60)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - MSG_ESTIMATE - 60)
        assert first.headers["x-ratelimit-limit-requests"] == "10"
        assert first.headers["x-ratelimit-remaining-requests"] == "9"
        used = first.json()["usage"]["total_tokens"]
        # Settled to what it used: the unused part of its 60 is room again.
        second = chat(client, max_tokens=1)
        assert second.headers["x-ratelimit-remaining-tokens"] == str(100 - used - MSG_ESTIMATE - 1)
        used += second.json()["usage"]["total_tokens"]
        over = chat(client, max_tokens=100 - used - MSG_ESTIMATE + 1)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert over.headers["x-ratelimit-remaining-tokens"] == str(100 - used)
        assert over.headers["x-ratelimit-reset-tokens"].endswith("s")
        too_large = chat(client, max_tokens=200)
        assert too_large.status_code == 429 and "Request too large" in too_large.json()["error"]["message"]
        assert "retry-after" not in too_large.headers
        # Another key is not limited and gets no rate headers.
        free = chat(client, OTHER, max_tokens=500)
        assert free.status_code == 200 and "x-ratelimit-limit-tokens" not in free.headers


def test_limits_in_anthropic_shape(make_config: Any, tmp_path: Path) -> None:
    with make_app(make_config, tmp_path, tpm=50) as client:
        refused = chat(client, path="/v1/messages", max_tokens=80)
        assert refused.status_code == 429
        assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.headers["x-ratelimit-limit-tokens"] == "50"


def test_quota_is_read_from_the_ledger_across_restarts(make_config: Any, tmp_path: Path) -> None:
    quota = {"tokens": 60, "per": "day"}
    used = 0
    with make_app(make_config, tmp_path, quota=quota) as client:
        while True:
            answer = chat(client, max_tokens=5)
            if answer.status_code != 200:
                break
            used += answer.json()["usage"]["total_tokens"]
        assert answer.status_code == 429
        error = answer.json()["error"]
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert used + MSG_ESTIMATE + 5 > 60 >= used
    with make_app(make_config, tmp_path, quota=quota) as client:  # a restart forgets nothing
        again = chat(client, max_tokens=5)
        assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
        assert chat(client, OTHER).status_code == 200


def test_usage_endpoint_and_metrics(make_config: Any, tmp_path: Path) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    with make_app(make_config, tmp_path) as client:
        totals = [chat(client).json()["usage"], chat(client).json()["usage"], chat(client, OTHER).json()["usage"]]
        stream = client.post(
            "/v1/chat/completions",
            json={"model": "a", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}},
            headers={"authorization": f"Bearer {KEY}"},
        )
        last = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")][-1]
        totals.append(last["usage"])
        assert chat(client, model="nope").status_code == 404  # no model reached: no row
        by_key = client.get("/admin/usage?group_by=key", headers=admin).json()["data"]
        limited = [t for i, t in enumerate(totals) if i != 2]
        assert by_key == [
            {
                "key": "limited",
                "requests": 3,
                "prompt_tokens": sum(t["prompt_tokens"] for t in limited),
                "completion_tokens": sum(t["completion_tokens"] for t in limited),
                "reasoning_tokens": 0,
                "cached_tokens": 0,
            },
            {
                "key": "other",
                "requests": 1,
                "prompt_tokens": totals[2]["prompt_tokens"],
                "completion_tokens": totals[2]["completion_tokens"],
                "reasoning_tokens": 0,
                "cached_tokens": 0,
            },
        ]
        today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        grouped = client.get("/admin/usage?group_by=key,model,day", headers=admin).json()["data"]
        assert [(r["key"], r["model"], r["day"], r["requests"]) for r in grouped] == [
            ("limited", "a", today, 3),
            ("other", "a", today, 1),
        ]
        assert client.get("/admin/usage?until=2000-01-01", headers=admin).json()["data"] == []
        assert client.get("/admin/usage?group_by=colour", headers=admin).status_code == 400
        assert client.get("/admin/usage?since=yesterday", headers=admin).status_code == 400
        assert client.get("/admin/usage", headers={"authorization": f"Bearer {KEY}"}).status_code == 401
        metrics = client.get("/metrics").text
        prompt = sum(t["prompt_tokens"] for t in limited)
        assert f'gateway_tokens_total{{key="limited",kind="prompt",model="a"}} {float(prompt)}' in metrics
        assert 'gateway_state_backend_up{backend="store"} 1.0' in metrics


def test_a_client_that_leaves_mid_stream_still_leaves_a_row(make_config: Any, tmp_path: Path) -> None:
    gateway = {"access_log": None}
    settings = parse_settings(make_config({"a": {"model": {"n_ctx": 512}}}, gateway=gateway), tmp_path)
    slow = FakeScript(reply_tokens=40, step_delay=0.02)
    with TestClient(create_app(settings, spawn=FakeWorkers({"a": slow}).spawn)) as client:
        body = {"model": "a", "messages": MSG, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content":"' in line:
                    break  # leave after the first piece of text
        rows: list[dict[str, Any]] = []
        for _ in range(200):
            rows = client.get("/admin/usage").json()["data"]
            if rows:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert len(rows) == 1 and rows[0]["prompt_tokens"] > 0
        assert 1 <= rows[0]["completion_tokens"] < 40


class FlakyDatabase(SqliteDatabase):
    """SQLite in memory that refuses writes while `down`."""

    def __init__(self) -> None:
        super().__init__(None)
        self.down = False

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.down:
            raise ConnectionError("store unreachable")
        super().execute_many(sql, rows)


def row(key: str, prompt: int) -> UsageRow:
    return UsageRow(1_000_000.0, key, "m", "/v1/chat/completions", 200, prompt, 1, 0, 0, 0.1)


def test_ledger_spills_while_down_and_replays_once() -> None:
    db = FlakyDatabase()
    ledger = Ledger(db, interval=3600, spill_max=3)
    ledger.start()
    db.down = True
    for prompt in range(5):
        ledger.add(row("k", prompt))
    assert not ledger.flush() and not ledger.healthy
    assert ledger.pending == 3 and ledger.dropped == 2  # the bound holds; the oldest went
    db.down = False
    assert ledger.flush() and ledger.healthy and ledger.pending == 0
    assert ledger.tokens_since("k", 0) == (2 + 3 + 4) + 3
    ledger.add(row("k", 10))
    ledger.close()  # what is left is written on close
    assert ledger.tokens_since("k", 0) == (2 + 3 + 4) + 3 + 11


def test_ledger_does_not_count_a_replayed_row_twice() -> None:
    ledger = Ledger(SqliteDatabase(None), interval=3600)
    same = row("k", 5)
    ledger.add(same)
    ledger.flush()
    ledger.add(same)  # a batch retried after a commit that did happen
    ledger.flush()
    assert ledger.usage(None, None, []) == [
        {"requests": 1, "prompt_tokens": 5, "completion_tokens": 1, "reasoning_tokens": 0, "cached_tokens": 0}
    ]
    ledger.close()


def test_quota_counts_reservations_and_falls_back_when_the_ledger_fails() -> None:
    calls: list[str] = []

    async def used_since(key: str, since: float) -> int:
        calls.append(key)
        if len(calls) > 1:
            raise ConnectionError("down")
        return 50

    clock = [0.0]
    limiter = Limiter(used_since=used_since, clock=lambda: clock[0])
    key = Principal("k", None, None, None, Quota(tokens=100, per="month"))

    async def run() -> None:
        first = await limiter.admit(key, 30)
        assert first.ticket is not None
        assert (await limiter.admit(key, 30)).error is not None  # 50 used + 30 reserved + 30 > 100
        limiter.settle(first.ticket, 10)
        assert (await limiter.admit(key, 30)).ticket is not None  # 50 + 10 + 30
        clock[0] = 60  # the ledger is read again, and fails: the counts so far stand
        refused = (await limiter.admit(key, 20)).error
        assert refused is not None and refused.code == "insufficient_quota"

    asyncio.run(run())
    assert calls == ["k", "k"]


def test_periods_are_utc_calendar_periods() -> None:
    wednesday = datetime.datetime(2026, 12, 30, 15, 0, tzinfo=datetime.UTC).timestamp()

    def day(epoch: float) -> str:
        return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d")

    assert [day(t) for t in period_bounds("day", wednesday)] == ["2026-12-30", "2026-12-31"]
    assert [day(t) for t in period_bounds("week", wednesday)] == ["2026-12-28", "2027-01-04"]
    assert [day(t) for t in period_bounds("month", wednesday)] == ["2026-12-01", "2027-01-01"]


def test_estimate_and_durations() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;..."}}]}],
        "max_tokens": 10,
        "n": 3,
    }
    assert estimate(json.dumps(body).encode()) == 4 + 30  # "user" + "image_url": 13 characters; max_tokens times n
    assert estimate(b"not json") == 0
    assert estimate(json.dumps({"input": "x" * 40, "max_output_tokens": 7}).encode()) == 17
    assert [duration(s) for s in (0.02, 1.5, 360)] == ["20ms", "1.5s", "6m0s"]


@pytest.mark.parametrize("per", ["day", "week", "month"])
def test_quota_configuration(make_config: Any, tmp_path: Path, per: str) -> None:
    doc = make_config({"a": {}}, gateway={"api_keys": [{"id": "k", "key": KEY, "quota": {"tokens": 5, "per": per}}]})
    assert parse_settings(doc, tmp_path).gateway.api_keys[0].quota == Quota(tokens=5, per=per)  # type: ignore[arg-type]


def test_reload_changes_limits_at_once_and_keeps_a_stream(make_config: Any, tmp_path: Path) -> None:
    def doc(tpm: int) -> dict[str, Any]:
        gateway = {"api_keys": [{"id": "limited", "key": KEY, "tpm": tpm}], "admin_key": ADMIN, "access_log": None}
        return make_config({"a": {"model": {"n_ctx": 512}}}, gateway=gateway)  # type: ignore[no-any-return]

    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump(doc(1000)))
    slow = FakeScript(reply_tokens=30, step_delay=0.01)
    app = create_app(load_settings(config), spawn=FakeWorkers({"a": slow}).spawn, config_path=config)
    with TestClient(app) as client:
        body = {"model": "a", "messages": MSG, "stream": True, "max_tokens": 30}
        with client.stream("POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as s:
            lines = s.iter_lines()
            assert s.headers["x-ratelimit-limit-tokens"] == "1000"
            assert any(line.startswith("data: {") for line in lines)
            config.write_text(yaml.safe_dump(doc(500)))
            assert client.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in "".join(rest)
        after = chat(client, max_tokens=1)
        assert after.status_code == 200 and after.headers["x-ratelimit-limit-tokens"] == "500"


def test_absent_servers_skip_but_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/servers.py: a machine without PostgreSQL or Redis skips their tests, saying why; CI
    (CI=true) may not pass by skipping them."""
    monkeypatch.setattr(servers, "POSTGRES", "postgresql://127.0.0.1:1/test")
    monkeypatch.setattr(servers, "REDIS", "redis://127.0.0.1:1/0")
    for make in (servers.postgres_schema, servers.redis_prefix):
        monkeypatch.setenv("CI", "false")
        with pytest.raises(pytest.skip.Exception, match="not reachable"):
            next(make())
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="CI=true"):
            next(make())


def test_rows_the_store_refuses_at_exit_wait_in_the_spill_file(tmp_path: Path) -> None:
    spill = tmp_path / "spill" / "usage.jsonl"
    down = FlakyDatabase()
    down.down = True
    first = Ledger(down, interval=3600, spill_file=spill)
    for prompt in (1, 2):
        first.add(row("k", prompt))
    first.close()
    assert len(spill.read_text().splitlines()) == 2
    db = SqliteDatabase(None)
    second = Ledger(db, interval=3600, spill_file=spill)  # the next start reads them back
    assert not spill.exists() and second.pending == 2
    second.close()
    assert second.tokens_since("k", 0) == (1 + 1) + (2 + 1)
