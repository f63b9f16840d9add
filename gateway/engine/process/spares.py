"""Starting worker processes, and keeping spare ones started ahead of need."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection

from gateway.engine.worker import main as worker

Spawned = tuple[multiprocessing.process.BaseProcess, Connection]


async def spawn_worker(env: dict[str, str] | None = None) -> Spawned:
    """Start a worker process that imports llama_cpp and waits for its model. `env` is applied in the
    child before llama.cpp starts (`CUDA_VISIBLE_DEVICES` for a GPU placement)."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    process = ctx.Process(target=worker.main, args=(child_conn, env), name="gateway-worker", daemon=True)
    # Spawning writes the pickled start-up data to the child: off the event loop.
    await asyncio.to_thread(process.start)
    child_conn.close()  # only the child holds its end now, so its exit reads as EOF here
    return process, parent_conn


class SparePool:
    """Keeps started workers waiting for a model, so a load skips interpreter start and imports.

    A spare costs the memory of an interpreter with llama_cpp imported (~57 MB) and no model. Its
    start takes a core for about a second, and llama.cpp's decode threads stall for as long as one of
    them loses its core (measured: one 140-200 ms step in the streams running then). So the
    replacement for a spare that was taken starts `refill_delay` seconds later and only once `busy`
    (given at `start`: some model is generating or loading) is false, or after `max_defer` seconds of
    continuous work anyway.
    """

    def __init__(
        self, size: int, refill_delay: float = 1.0, max_defer: float = 60.0, poll_interval: float = 0.25
    ) -> None:
        self._size = size
        self._refill_delay = refill_delay
        self._max_defer = max_defer
        self._poll_interval = poll_interval
        self._busy: Callable[[], bool] = lambda: False
        self._spares: list[Spawned] = []
        self._filling: asyncio.Task[None] | None = None
        self._deferred: asyncio.Task[None] | None = None
        self._closed = False

    async def take(self) -> Spawned:
        spawned = None
        while self._spares and spawned is None:
            process, conn = self._spares.pop(0)
            if process.is_alive():
                spawned = (process, conn)
            else:
                conn.close()
        if self._deferred is None or self._deferred.done():
            self._deferred = asyncio.create_task(self._refill_when_quiet())
        return spawned if spawned is not None else await spawn_worker()

    async def _refill_when_quiet(self) -> None:
        await asyncio.sleep(self._refill_delay)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_defer
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(self._poll_interval)
        self.refill()

    def start(self, busy: Callable[[], bool], fill: bool = True) -> None:
        """Start serving: `busy` says when the cores are in use; `fill`: start the spares now."""
        self._busy = busy
        if fill:
            self.refill()

    def refill(self) -> None:
        if self._size > 0 and not self._closed and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        while len(self._spares) < self._size and not self._closed:
            spawned = await spawn_worker()
            if self._closed:
                _discard(spawned)
            else:
                self._spares.append(spawned)

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._filling, self._deferred) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for spawned in self._spares:
            _discard(spawned)
        self._spares.clear()


def _discard(spawned: Spawned) -> None:
    process, conn = spawned
    conn.close()  # the worker exits at EOF
    process.join(1.0)
    if process.exitcode is None:
        process.kill()
