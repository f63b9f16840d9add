"""Shares the CPU between generations of different models.

llama.cpp's threads spin while they wait for each other, so two models generating at once on cores
they must share run slower together than one after the other. Each generation reserves its thread
count from a budget of CPU threads (default: the machine's cores), first come first served.
"""

from __future__ import annotations

import asyncio
import collections
import os


def default_threads() -> int:
    """llama-cpp-python's default thread count for a model that does not set one."""
    return max(1, (os.cpu_count() or 2) // 2)


class CpuThreads:
    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity if capacity is not None else (os.cpu_count() or 1)
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _need(self, threads: int) -> int:
        return max(1, min(threads, self.capacity))

    async def acquire(self, threads: int) -> int:
        """Wait for `threads` CPU threads; returns what must later be passed to release()."""
        if self.capacity <= 0:
            return 0  # unlimited
        need = self._need(threads)
        if not self._waiters and self.in_use + need <= self.capacity:
            self.in_use += need
            return need
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((need, future))
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(need)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove((need, future))
                self._wake()
            raise
        return need

    def release(self, granted: int) -> None:
        self.in_use -= granted
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            need, future = self._waiters.popleft()
            if not future.done():
                self.in_use += need
                future.set_result(None)
