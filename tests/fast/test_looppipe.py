"""The worker pipe's event-loop end: whole messages of any size, both ways, on a non-blocking pipe
(uvloop makes a watched descriptor non-blocking; a plain Connection then fails mid-message)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from typing import Any

import pytest
import uvloop

from gateway.engine.process.pipe import LoopPipe, frame, unframe


def test_frames_match_connection_framing() -> None:
    ours, theirs = multiprocessing.Pipe()
    message = ("delta", 7, "x" * 30_000, None, 0)
    os.write(ours.fileno(), frame(message))  # a worker's Connection.recv reads our frame...
    assert theirs.recv() == message
    theirs.send(message)  # ...and what its Connection.send writes unframes to the same message
    raw = bytearray()
    while len(raw) < len(frame(message)):
        raw += os.read(ours.fileno(), 1 << 16)
    assert unframe(raw) == ([message], len(raw))
    assert unframe(raw[:-1]) == ([], 0)  # an incomplete frame waits for the rest


@pytest.mark.parametrize("size", [10, 300_000, 5_000_000])
def test_large_messages_cross_both_ways_on_uvloop(size: int) -> None:
    gateway_end, worker_end = multiprocessing.Pipe(duplex=True)

    def echo() -> None:  # the worker side: a plain blocking Connection
        while True:
            try:
                message = worker_end.recv()
            except EOFError:
                return
            worker_end.send(("echo", message))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()

    async def main() -> list[Any]:
        received: list[Any] = []
        done = asyncio.Event()
        closed = asyncio.Event()

        def on_message(message: Any) -> None:
            received.append(message)
            if len(received) == 3:
                done.set()

        channel = LoopPipe(gateway_end, on_message, closed.set)
        for n in range(3):
            channel.send(("generate", n, "y" * size))
        await asyncio.wait_for(done.wait(), 60)
        assert not closed.is_set()
        channel.close()
        return received

    received = uvloop.run(main())
    assert received == [("echo", ("generate", n, "y" * size)) for n in range(3)]
    thread.join(10)


def test_closed_pipe_is_reported_once() -> None:
    gateway_end, worker_end = multiprocessing.Pipe(duplex=True)

    async def main() -> int:
        calls = 0
        lost = asyncio.Event()

        def on_closed() -> None:
            nonlocal calls
            calls += 1
            lost.set()

        channel = LoopPipe(gateway_end, lambda message: None, on_closed)
        worker_end.close()
        await asyncio.wait_for(lost.wait(), 10)
        channel.send(("cancel", 1))  # harmless once closed
        channel.close()
        return calls

    assert uvloop.run(main()) == 1
