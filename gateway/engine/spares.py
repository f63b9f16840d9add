"""Starting worker processes, and keeping spare ones started ahead of need."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection

from gateway.engine import worker

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

    A spare costs the memory of an interpreter with llama_cpp imported (~57 MB) and no model. The
    replacement for a spare that was taken starts `refill_delay` seconds later: starting it at once
    would compete for the cores with the load and first tokens it was taken for.
    """

    def __init__(self, size: int, refill_delay: float = 1.0) -> None:
        self._size = size
        self._refill_delay = refill_delay
        self._spares: list[Spawned] = []
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    async def take(self) -> Spawned:
        spawned = None
        while self._spares and spawned is None:
            process, conn = self._spares.pop(0)
            if process.is_alive():
                spawned = (process, conn)
            else:
                conn.close()
        asyncio.get_running_loop().call_later(self._refill_delay, self.refill)
        return spawned if spawned is not None else await spawn_worker()

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
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        for spawned in self._spares:
            _discard(spawned)
        self._spares.clear()


def _discard(spawned: Spawned) -> None:
    process, conn = spawned
    conn.close()  # the worker exits at EOF
    process.join(1.0)
    if process.exitcode is None:
        process.kill()
