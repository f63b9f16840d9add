"""What stands in for a worker process in fast tests: a thread (`ThreadProcess`, the slice of
multiprocessing.Process the parent handle uses), a hang-up that reads as the process's exit, and a
channel that records what crossed the pipe (`RecordingChannel`)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.engine import wire


class ThreadProcess:
    """The slice of multiprocessing.Process that the parent handle uses."""

    def __init__(self, target: Callable[[], None], conn: Connection, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self._conn = conn
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True, name="fake-worker")
        self._thread.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
            code = 0
        except BaseException:  # a crash of the fake worker reads as a killed process
            code = -9
        if self.exitcode is None:
            self.exitcode = code

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def kill(self) -> None:
        """As SIGKILL: the parent reads EOF, and the worker's threads end when their pipe does."""
        if self.exitcode is None:
            self.exitcode = -9
        hang_up(self._conn)

    def close(self) -> None:
        pass


def hang_up(conn: Connection) -> None:
    """Like a process exit: both ends read EOF, whichever thread is blocked on them."""
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, TypeError):
        pass  # closed already (TypeError: by the other thread, between the check and the read of its fd)


class RecordingChannel(wire.Channel):
    def __init__(self, conn: Connection, sent: list[wire.FromWorker], received: list[wire.ToWorker]) -> None:
        super().__init__(conn)
        self._sent = sent
        self._received = received

    def send(self, message: wire.ToWorker | wire.FromWorker) -> None:
        self._sent.append(message)  # type: ignore[arg-type]
        super().send(message)

    def recv(self) -> Any:
        try:
            message = super().recv()
        except TypeError as exc:  # its fd closed mid-read by the thread that killed this fake process
            raise EOFError from exc
        self._received.append(message)
        return message
