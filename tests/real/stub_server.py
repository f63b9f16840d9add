"""Misbehaving OpenAI-compatible servers on loopback, for the remote-model tests: one that accepts
connections and never answers, one that starts a stream and then stalls."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from typing import Any

from tests.real.server import free_port

CHUNK = {
    "id": "chatcmpl-stub",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "stub",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Once"}, "finish_reason": None}],
}


class StubServer:
    def __init__(self, mode: str) -> None:
        assert mode in ("silent", "stall")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests = 0
        released = self.released = threading.Event()
        stub = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                connection: socket.socket = self.request
                connection.recv(65536)  # the request; its content does not matter here
                stub.requests += 1
                if mode == "stall":
                    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                    connection.sendall(head + f"data: {json.dumps(CHUNK)}\n\n".encode())
                released.wait(120)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
