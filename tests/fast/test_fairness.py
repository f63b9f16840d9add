"""Priority and fair share between keys (scheduler/fairness.py), first as a pure policy with a fake
clock, then through the scheduler's holds over fake workers: who gets the next turn, max_concurrent,
aging, and which hold is paused for an interactive request."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.scheduler import Scheduler
from gateway.scheduler.fairness import KeyTurns, Priority, Tenant, Turn, TurnQueue, preemption_victim
from tests.fast.scheduler_helpers import build, enter

pytestmark = pytest.mark.anyio

AGING = 30.0


def tenant(key: str, priority: Priority = Priority.INTERACTIVE, max_concurrent: int | None = None) -> Tenant:
    return Tenant(key, priority, max_concurrent)


def queued(queue: TurnQueue, who: Tenant, since: float = 0.0) -> Turn:
    turn = Turn(who, since, lambda: None)
    queue.add(turn)
    return turn


# -- the policy ---------------------------------------------------------------------------------


def test_interactive_goes_before_batch_that_came_first() -> None:
    queue, keys = TurnQueue(), KeyTurns()
    queued(queue, tenant("eval", Priority.BATCH))
    chat = queued(queue, tenant("alice"))
    assert queue.pick({}, keys, now=1.0, aging=AGING) is chat


def test_the_key_with_fewer_turns_goes_first_within_a_priority() -> None:
    queue, keys = TurnQueue(), KeyTurns()
    flood = [queued(queue, tenant("flood")) for _ in range(5)]
    small = queued(queue, tenant("small"))
    assert queue.pick({"flood": 3, "small": 0}, keys, now=0.0, aging=AGING) is small
    assert queue.pick({"flood": 3, "small": 1}, keys, now=0.0, aging=AGING) is flood[0]  # then arrival order


def test_a_batch_request_that_waited_long_enough_is_served_as_interactive() -> None:
    queue, keys = TurnQueue(), KeyTurns()
    old = queued(queue, tenant("eval", Priority.BATCH), since=0.0)
    queued(queue, tenant("alice"))
    assert queue.pick({}, keys, now=AGING - 1, aging=AGING) is not old
    queue.add(Turn(tenant("alice"), AGING, lambda: None))
    assert queue.pick({}, keys, now=AGING, aging=AGING) is old  # aged: ahead of the younger interactive one


def test_a_key_at_max_concurrent_waits_and_others_pass_it() -> None:
    queue, keys = TurnQueue(), KeyTurns()
    capped = tenant("capped", max_concurrent=2)
    keys.add(capped, 2)
    queued(queue, capped)
    other = queued(queue, tenant("other", Priority.BATCH))
    assert queue.pick({}, keys, now=0.0, aging=AGING) is other
    assert queue.pick({}, keys, now=0.0, aging=AGING) is None
    keys.add(capped, -1)
    assert queue.pick({}, keys, now=0.0, aging=AGING) is not None


def test_the_newest_pausable_batch_turn_is_the_victim() -> None:
    older = Turn(tenant("eval", Priority.BATCH), 0.0, lambda: None, started=1, pause=lambda: True)
    newer = Turn(tenant("eval", Priority.BATCH), 0.0, lambda: None, started=2, pause=lambda: True)
    unpausable = Turn(tenant("eval", Priority.BATCH), 0.0, lambda: None, started=3)
    chat = Turn(tenant("alice"), 0.0, lambda: None, started=4, pause=lambda: True)
    assert preemption_victim([older, newer, unpausable, chat]) is newer
    assert preemption_victim([chat, unpausable]) is None


# -- through the scheduler --------------------------------------------------------------------


async def one_model(make_config: Any, tmp_path: Path, parallel: int = 2) -> Scheduler:
    """A scheduler with model `a` loaded (so that turns, not the load, decide who waits)."""
    scheduler, _, _ = build(make_config, tmp_path, {"a": {"runtime": {"parallel": parallel}, "max_queue": 64}})
    await scheduler.warm("a")
    return scheduler


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_interactive_request_gets_the_next_turn_before_a_batch_flood(make_config: Any, tmp_path: Path) -> None:
    scheduler = await one_model(make_config, tmp_path)
    running = [await enter(scheduler.hold("a", tenant=tenant("eval", Priority.BATCH))) for _ in range(2)]
    flood = [asyncio.create_task(enter(scheduler.hold("a", tenant=tenant("eval", Priority.BATCH)))) for _ in range(6)]
    await settle()
    chat = asyncio.create_task(enter(scheduler.hold("a", tenant=tenant("alice"))))
    await settle()
    running[0].release()
    await settle()
    assert chat.done() and not any(t.done() for t in flood)
    (await chat).release()
    running[1].release()
    for task in flood:
        (await task).release()


async def test_two_batch_keys_share_the_turns_evenly(make_config: Any, tmp_path: Path) -> None:
    """16 requests of one key and 4 of another, 4 turns: while both wait, turns alternate to the key
    holding fewer, so the small key is never starved behind the big one's queue."""
    scheduler = await one_model(make_config, tmp_path, parallel=4)
    big = [asyncio.create_task(enter(scheduler.hold("a", tenant=tenant("big", Priority.BATCH)))) for _ in range(16)]
    await settle()
    small = [asyncio.create_task(enter(scheduler.hold("a", tenant=tenant("small", Priority.BATCH)))) for _ in range(4)]
    await settle()
    keys = {**{t: "big" for t in big}, **{t: "small" for t in small}}

    def running() -> Counter[str]:
        return Counter(key for t, key in keys.items() if t.done() and not t.result().released)

    assert running() == {"big": 4}  # it was alone when the turns were free
    for _ in range(3):  # each release hands the turn to the key holding fewer
        oldest = next(t for t in keys if t.done() and not t.result().released)
        oldest.result().release()
        await settle()
    assert running() == {"big": 2, "small": 2}
    for task in keys:
        (await task).release()


async def test_max_concurrent_holds_a_key_back_over_every_model(make_config: Any, tmp_path: Path) -> None:
    scheduler, _, _ = build(
        make_config, tmp_path, {"a": {"runtime": {"parallel": 4}}, "b": {"runtime": {"parallel": 4}}}
    )
    capped = tenant("capped", max_concurrent=2)
    first = await enter(scheduler.hold("a", tenant=capped))
    await enter(scheduler.hold("b", tenant=capped))
    third = asyncio.create_task(enter(scheduler.hold("b", tenant=capped)))
    await settle()
    assert not third.done()  # turns are free on b, but the key has its two running
    first.release()  # on another model: the waiting request on b is let in
    await asyncio.wait_for(third, 2)


async def test_an_interactive_request_pauses_the_newest_batch_hold(make_config: Any, tmp_path: Path) -> None:
    scheduler = await one_model(make_config, tmp_path)
    events: list[str] = []
    batch = []
    for name in ("old", "new"):
        held = await enter(scheduler.hold("a", tenant=tenant("eval", Priority.BATCH)))
        held.pausable(lambda n=name: events.append(f"pause {n}") is None, lambda n=name: events.append(f"resume {n}"))
        batch.append(held)
    chat = await asyncio.wait_for(enter(scheduler.hold("a", tenant=tenant("alice"))), 2)
    assert events == ["pause new"]
    view = scheduler.view("a")
    assert (view.running, view.waiting, view.preemptions) == (2, 1, 1)
    assert {(t.key, t.running, t.waiting, t.paused) for t in view.tenants} == {("alice", 1, 0, 0), ("eval", 1, 1, 1)}
    chat.release()
    assert events == ["pause new", "resume new"]
    assert scheduler.view("a").running == 2
    for held in batch:
        held.release()
    view = scheduler.view("a")
    assert (view.running, view.waiting) == (0, 0)


async def test_a_paused_hold_released_while_paused_leaves_no_trace(make_config: Any, tmp_path: Path) -> None:
    scheduler = await one_model(make_config, tmp_path, parallel=1)
    batch = await enter(scheduler.hold("a", tenant=tenant("eval", Priority.BATCH)))
    batch.pausable(lambda: True, lambda: None)
    chat = await asyncio.wait_for(enter(scheduler.hold("a", tenant=tenant("alice"))), 2)
    batch.release()  # its client went away while it was paused
    chat.release()
    view = scheduler.view("a")
    assert (view.running, view.waiting, view.tenants) == (0, 0, ())


async def test_interactive_holds_are_never_paused_and_batch_ones_only_when_pausable(
    make_config: Any, tmp_path: Path
) -> None:
    scheduler = await one_model(make_config, tmp_path, parallel=1)
    held = await enter(scheduler.hold("a", tenant=tenant("eval", Priority.BATCH)))  # its generation not begun
    chat = asyncio.create_task(enter(scheduler.hold("a", tenant=tenant("alice"))))
    await settle()
    assert not chat.done()
    held.release()
    second = await asyncio.wait_for(chat, 2)
    second.pausable(lambda: True, lambda: None)
    other = asyncio.create_task(enter(scheduler.hold("a", tenant=tenant("bob"))))
    await settle()
    assert not other.done() and scheduler.view("a").preemptions == 0
    second.release()
    (await other).release()
