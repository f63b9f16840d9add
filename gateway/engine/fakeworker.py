"""The real worker loop over `FakeLlama`, in a thread that stands in for the worker process: the
parent handle, the wire messages, the channel, the worker and its batch all run as in production."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from gateway.engine.fakellama import FakeLlama, FakeScript
from gateway.engine.wire import Channel, Load, Loaded, LoadFailed
from gateway.engine.worker import Worker

_pids = itertools.count(1_000_000)


class ThreadProcess:
    """The slice of multiprocessing.Process that the parent handle uses."""

    def __init__(self, target: Any) -> None:
        self.pid = next(_pids)
        self.exitcode: int | None = None
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True, name="fake-worker")
        self._thread.start()

    def _run(self, target: Any) -> None:
        try:
            target()
            self.exitcode = 0
        except BaseException:  # a crash of the fake worker reads as a killed process
            self.exitcode = -9

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def kill(self) -> None:
        pass  # the thread ends when its pipe closes

    def close(self) -> None:
        pass


def fake_main(conn: Connection, script: FakeScript, backends: list[FakeLlama]) -> None:
    channel = Channel(conn)
    try:
        load = channel.recv()
    except (EOFError, OSError):
        return
    assert isinstance(load, Load)
    config = load.config
    time.sleep(script.load_delay)
    if script.fail_load:
        channel.send(LoadFailed(script.fail_load))
        return
    slots = config.get("parallel", 1)
    backend = FakeLlama(n_ctx=config["n_ctx"], slots=slots, n_batch=min(config["n_batch"], 64), script=script)
    backends.append(backend)
    channel.send(Loaded(n_ctx=backend.n_ctx, pid=0, slots=slots, kv_cells=backend.kv_cells))
    worker = Worker(channel, backend, backend.render, slots, config["repeat_last_n"], on_exit=lambda: None)
    reader = threading.Thread(target=worker.read, daemon=True)
    reader.start()
    try:
        worker.run()
    finally:
        # Like a process exit: the parent reads EOF, and so does the reader thread blocked in recv.
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        conn.close()


async def spawn_fake_worker(script: FakeScript, backends: list[FakeLlama]) -> tuple[Any, Connection]:
    parent, child = Pipe(duplex=True)
    return ThreadProcess(lambda: fake_main(child, script, backends)), parent
