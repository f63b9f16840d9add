"""The spare-worker pool (engine/spares.py), with process start-up faked: takes, refills, closes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.engine.process import spares

pytestmark = pytest.mark.anyio


class FakeProcess:
    def __init__(self, alive: bool = True) -> None:
        self.alive = alive
        self.exitcode: int | None = None if alive else 0
        self.killed = False

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        self.exitcode = 0

    def kill(self) -> None:
        self.killed = True


class FakeConn:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    made: list[tuple[Any, Any]] = []

    async def spawn() -> tuple[Any, Any]:
        made.append((FakeProcess(), FakeConn()))
        return made[-1]

    monkeypatch.setattr(spares, "spawn_worker", spawn)
    return made


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_refill_keeps_size_spares(spawned: list[tuple[Any, Any]]) -> None:
    pool = spares.SparePool(2, refill_delay=0)
    pool.refill()
    await until(lambda: len(spawned) == 2)
    taken = await pool.take()
    assert taken[0] is spawned[0][0]  # the oldest spare first, no new start on the request's path
    await until(lambda: len(spawned) == 3)  # replaced after the delay
    await pool.close()
    assert all(conn.closed for _, conn in spawned[1:])


async def test_dead_spare_is_skipped_and_an_empty_pool_starts_one(spawned: list[tuple[Any, Any]]) -> None:
    pool = spares.SparePool(1, refill_delay=3600)
    pool.refill()
    await until(lambda: len(spawned) == 1)
    spawned[0][0].alive = False
    taken = await pool.take()
    assert taken[0] is spawned[1][0] and spawned[0][1].closed
    await pool.close()


async def test_size_zero_never_starts_ahead(spawned: list[tuple[Any, Any]]) -> None:
    pool = spares.SparePool(0, refill_delay=0)
    pool.refill()
    await asyncio.sleep(0.02)
    assert spawned == []
    await pool.take()
    assert len(spawned) == 1
    await pool.close()


async def test_close_discards_spares_and_stops_refilling(spawned: list[tuple[Any, Any]]) -> None:
    pool = spares.SparePool(2, refill_delay=0)
    pool.refill()
    await until(lambda: len(spawned) == 2)
    await pool.close()
    pool.refill()
    await asyncio.sleep(0.02)
    assert len(spawned) == 2 and all(conn.closed for _, conn in spawned)


async def test_refill_waits_until_nothing_generates(spawned: list[tuple[Any, Any]]) -> None:
    """A spare's start-up would take a core from running decodes: it waits for a quiet moment."""
    pool = spares.SparePool(1, refill_delay=0, max_defer=3600, poll_interval=0.01)
    busy = [True]
    pool.start(lambda: busy[0])
    await until(lambda: len(spawned) == 1)
    await pool.take()
    await asyncio.sleep(0.1)
    assert len(spawned) == 1  # still busy: no replacement yet
    busy[0] = False
    await until(lambda: len(spawned) == 2)
    await pool.close()


async def test_refill_starts_after_max_defer_under_continuous_load(spawned: list[tuple[Any, Any]]) -> None:
    pool = spares.SparePool(1, refill_delay=0, max_defer=0.05, poll_interval=0.01)
    pool.start(lambda: True)
    await until(lambda: len(spawned) == 1)
    await pool.take()
    await until(lambda: len(spawned) == 2)
    await pool.close()
