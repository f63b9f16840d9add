"""How the parent handle reads its worker's exit: a worker that reports a failed load and then ends,
as it does, has not stopped unexpectedly."""

from __future__ import annotations

import asyncio
import logging
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.engine import wire
from gateway.engine.process.handle import ProcessEngine
from gateway.errors import GatewayError
from gateway.testing.fakeprocess import ThreadProcess
from gateway.testing.fakeworker import until


@pytest.mark.anyio
async def test_an_exit_after_a_failed_load_is_not_logged_as_unexpected(
    make_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parent, child = Pipe(duplex=True)

    async def spawn() -> tuple[Any, Connection]:
        return ThreadProcess(lambda: None, child, 4_000_000), parent  # a process that has exited with code 0

    entry = parse_settings(make_config({"m": {}}), tmp_path).models["m"]
    engine = ProcessEngine("m", entry, load_timeout=30, spawn=spawn)
    caplog.set_level(logging.INFO, logger="gateway.engine.process.handle")
    loading = asyncio.ensure_future(engine.start())
    await until(child.poll, "the worker was not told to load")
    assert isinstance(child.recv(), wire.Load)
    # The worker's last message and its exit reach the parent together, before the load's waiter runs.
    child.send(wire.LoadFailed("ValueError: Failed to load model from file"))
    child.close()
    with pytest.raises(GatewayError) as failed:
        await loading
    assert failed.value.code == "model_load_failed"
    records = [r for r in caplog.records if r.name == "gateway.engine.process.handle"]
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    assert any("exited after its failed load" in r.getMessage() for r in records), [r.getMessage() for r in records]
