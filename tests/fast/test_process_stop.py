"""Stopping a worker twice at once (a failed load's own cleanup and the scheduler's) ends it once,
without the second call touching a process the first has closed. A real child process."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.engine.process.handle import ProcessEngine
from gateway.errors import GatewayError


def worker_that_waits(conn: Connection) -> None:
    """Reads until the parent's end closes, like a worker waiting for its next message."""
    try:
        while True:
            conn.recv()
    except (EOFError, OSError):
        return


async def spawn() -> tuple[Any, Connection]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=worker_that_waits, args=(child,), daemon=True)
    await asyncio.to_thread(process.start)
    child.close()
    return process, parent


@pytest.mark.anyio
async def test_a_forced_unload_during_the_load_stops_the_worker_once(make_config: Any, tmp_path: Path) -> None:
    """The unload's stop fails the waiting load, whose own cleanup stops the worker again meanwhile."""
    entry = parse_settings(make_config({"m": {}}), tmp_path).models["m"]
    engine = ProcessEngine("m", entry, load_timeout=30, spawn=spawn)
    loading = asyncio.ensure_future(engine.start())
    while engine.pid is None:  # spawned, and waiting for its model
        await asyncio.sleep(0.01)
    await engine.stop()
    with pytest.raises(GatewayError) as failed:
        await loading
    assert failed.value.code == "model_load_failed"
    assert engine.pid is None and not engine.alive
    await engine.stop()  # and again later: nothing left to do
