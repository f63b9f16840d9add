"""The CPU-thread budget: one grant per model shared by its running requests, FIFO between models,
and no model waits longer than max_wait (gateway.cpu_wait_max)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.memory.facts import inspect_models
from gateway.scheduler import Scheduler
from gateway.scheduler.cpu import CpuBudget
from gateway.testing.fakeworker import FakeWorkers

pytestmark = pytest.mark.anyio


async def test_requests_of_one_model_share_its_grant() -> None:
    cpu = CpuBudget(capacity=4, max_wait=3600)
    for _ in range(3):
        await asyncio.wait_for(cpu.enter("a", 4), 1)  # all three at once: one worker, one set of threads
    assert cpu.view().grants == {"a": 4} and cpu.in_use == 4
    cpu.leave("a")
    cpu.leave("a")
    assert cpu.in_use == 4  # still one running
    cpu.leave("a")
    assert cpu.in_use == 0 and cpu.view().grants == {}


async def test_models_take_turns_first_come_first_served() -> None:
    cpu = CpuBudget(capacity=2, max_wait=3600)
    await cpu.enter("a", 2)
    b = asyncio.create_task(cpu.enter("b", 1))
    c = asyncio.create_task(cpu.enter("c", 1))
    await asyncio.sleep(0.01)
    assert cpu.view().waiting == ("b", "c")
    cpu.leave("a")
    await asyncio.wait_for(asyncio.gather(b, c), 1)
    assert cpu.view().grants == {"b": 1, "c": 1}


async def test_a_model_waits_at_most_max_wait_behind_another_models_stream() -> None:
    """Model a streams without end; b is granted once it has waited max_wait, oversubscribing."""
    cpu = CpuBudget(capacity=2, max_wait=0.05)
    await cpu.enter("a", 2)
    b = asyncio.create_task(cpu.enter("b", 2))
    await asyncio.wait_for(b, 10)  # no release of a's grant happened
    view = cpu.view()
    assert view.grants == {"a": 2, "b": 2} and view.in_use == 4 > view.capacity
    assert view.overdue == 1


async def test_more_requests_of_a_waiting_model_wait_together() -> None:
    cpu = CpuBudget(capacity=1, max_wait=3600)
    await cpu.enter("a", 1)
    waiting = [asyncio.create_task(cpu.enter("b", 1)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert cpu.view().waiting == ("b",)
    cpu.leave("a")
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    for _ in waiting:
        cpu.leave("b")
    assert cpu.in_use == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    cpu = CpuBudget(capacity=1, max_wait=3600)
    await cpu.enter("a", 1)
    b = asyncio.create_task(cpu.enter("b", 1))
    c = asyncio.create_task(cpu.enter("c", 1))
    await asyncio.sleep(0.01)
    b.cancel()
    await asyncio.sleep(0.01)
    assert cpu.view().waiting == ("c",)
    cpu.leave("a")
    await asyncio.wait_for(c, 1)
    assert cpu.view().grants == {"c": 1}


async def test_no_limit() -> None:
    cpu = CpuBudget(capacity=0, max_wait=3600)
    await asyncio.wait_for(asyncio.gather(cpu.enter("a", 64), cpu.enter("b", 64)), 1)
    assert cpu.in_use == 128


async def test_scheduler_admits_model_b_behind_model_a_within_cpu_wait_max(make_config: Any, tmp_path: Path) -> None:
    """Through the scheduler: a's requests keep the whole CPU; b's request still runs, oversubscribed."""
    models = {"a": {"runtime": {"thread_count": 1, "parallel": 4}}, "b": {"runtime": {"thread_count": 1}}}
    settings = parse_settings(make_config(models, gateway={"cpu_threads": 1, "cpu_wait_max": 0.05}), tmp_path)
    scheduler = Scheduler(settings, inspect_models(settings), FakeWorkers().engine, budget=2**40)
    streams = [await scheduler.hold("a").__aenter__() for _ in range(2)]  # one grant, shared
    assert scheduler.cpu.view().grants == {"a": 1}
    b = await asyncio.wait_for(scheduler.hold("b").__aenter__(), 10)
    assert scheduler.cpu.view().grants == {"a": 1, "b": 1} and scheduler.cpu.view().overdue == 1
    for hold in (*streams, b):
        hold.release()
    assert scheduler.cpu.in_use == 0
    await scheduler.close()
