"""The gateway's end of a worker pipe, driven by the event loop and never blocking.

An event loop that watches a descriptor may switch it to non-blocking mode (uvloop does), and then
`Connection.send` and `Connection.recv` raise BlockingIOError in the middle of any message larger
than the pipe's buffer (64 KiB): a long prompt, stop string or embeddings batch read as a dead
worker. This end speaks `multiprocessing.connection.Connection`'s framing (a 4-byte big-endian
length, or -1 and then an 8-byte length, then the pickle), so the worker keeps its plain blocking
Connection; reads collect frames however they arrive, and writes queue what the pipe cannot take yet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_READ_CHUNK = 1 << 20
_READS_PER_WAKE = 64  # then let other callbacks run; the loop calls back while data is waiting


def frame(message: Any) -> bytes:
    """A message as Connection.send writes it."""
    payload = bytes(ForkingPickler.dumps(message))
    if len(payload) > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(len(payload)) + payload
    return _SHORT.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> tuple[list[Any], int]:
    """The complete messages at the start of `buffer`, and how many bytes they took."""
    messages: list[Any] = []
    offset = 0
    while True:
        if len(buffer) - offset < _SHORT.size:
            break
        (size,) = _SHORT.unpack_from(buffer, offset)
        header = _SHORT.size
        if size == -1:
            if len(buffer) - offset < header + _LONG.size:
                break
            (size,) = _LONG.unpack_from(buffer, offset + header)
            header += _LONG.size
        if len(buffer) - offset < header + size:
            break
        start = offset + header
        messages.append(pickle.loads(memoryview(buffer)[start : start + size]))
        offset = start + size
    return messages, offset


class LoopPipe:
    """Sends and receives whole messages over `conn` from the running event loop.

    `on_message` gets each message in order; `on_closed` is called once, when the worker's end is
    gone (EOF or a write error)."""

    def __init__(self, conn: Connection, on_message: Callable[[Any], None], on_closed: Callable[[], None]) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_closed = on_closed
        self._inbox = bytearray()
        self._outbox: collections.deque[memoryview] = collections.deque()
        self._writing = False
        self._closed = False
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: Any) -> None:
        if self._closed:
            return
        self._outbox.append(memoryview(frame(message)))
        self._flush()

    def _flush(self) -> None:
        while self._outbox and not self._closed:
            head = self._outbox[0]
            try:
                written = os.write(self._fd, head)
            except BlockingIOError:
                break
            except OSError:
                self._lost()
                return
            if written < len(head):
                self._outbox[0] = head[written:]
            else:
                self._outbox.popleft()
        pending = bool(self._outbox) and not self._closed
        if pending and not self._writing:
            self._loop.add_writer(self._fd, self._flush)
        elif not pending and self._writing:
            self._loop.remove_writer(self._fd)
        self._writing = pending

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                data = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                self._lost()
                return
            if not data:
                self._deliver()
                self._lost()
                return
            self._inbox += data
        self._deliver()

    def _deliver(self) -> None:
        messages, used = unframe(self._inbox)
        if used:
            del self._inbox[:used]
        for message in messages:
            if self._closed:
                return
            self._on_message(message)

    def _lost(self) -> None:
        if self._closed:
            return
        self.close()
        self._on_closed()

    def close(self) -> None:
        """Stop watching the pipe and close it (the worker reads EOF and exits)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        self._writing = False
        self._outbox.clear()
        self._conn.close()
