"""The real worker loop over `FakeLlama`, in a thread that stands in for the worker process: the
parent handle, the wire messages, the channel, the worker and its batch all run as in production."""

from __future__ import annotations

import itertools
import re
import socket
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from gateway.engine.fakellama import FakeLlama, FakeScript
from gateway.engine.loadlog import LogCapture, failure_message, parse_lines
from gateway.engine.wire import Channel, DeviceError, Load, Loaded, LoadFailed
from gateway.engine.worker import Worker

if TYPE_CHECKING:
    from gateway.fakenvml import FakeGpus

_pids = itertools.count(1_000_000)


class ThreadProcess:
    """The slice of multiprocessing.Process that the parent handle uses."""

    def __init__(self, target: Any, pid: int | None = None) -> None:
        self.pid = pid if pid is not None else next(_pids)
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


def fake_main(
    conn: Connection, script: FakeScript, backends: list[FakeLlama], env: dict[str, str] | None = None, pid: int = 0
) -> None:
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
    capture = LogCapture()
    try:
        serve(channel, conn, script, backends, config, capture, env, pid)
    finally:
        if script.gpus is not None:
            script.gpus.release(pid)  # as the driver takes back an exited process's memory


def serve(
    channel: Channel,
    conn: Connection,
    script: FakeScript,
    backends: list[FakeLlama],
    config: dict[str, Any],
    capture: LogCapture,
    env: dict[str, str] | None,
    pid: int,
) -> None:
    failure = _allocate(script.gpus, pid, env, capture, script.load_log) if script.gpus is not None else None
    if failure is not None:
        channel.send(LoadFailed(failure, capture.report().to_wire()))
        return
    for line in script.load_log:  # llama.cpp logs a buffer once it is allocated
        capture.feed(2, line + "\n")
    slots = config.get("parallel", 1)
    backend = FakeLlama(n_ctx=config["n_ctx"], slots=slots, n_batch=min(config["n_batch"], 64), script=script)
    backends.append(backend)
    backend.log = capture.feed
    capture.on_oom = lambda oom: channel.send(DeviceError(oom.device, oom.need, oom.line))
    memory = capture.report().to_wire()
    channel.send(Loaded(n_ctx=backend.n_ctx, pid=pid, slots=slots, kv_cells=backend.kv_cells, memory=memory))
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


def _allocate(
    gpus: FakeGpus, pid: int, env: dict[str, str] | None, capture: LogCapture, lines: tuple[str, ...]
) -> str | None:
    """Take on the fake GPUs what the load's log lines say, per device the worker sees; a device
    without room fails the load as llama.cpp does (its log lines, then llama-cpp-python's ValueError)."""
    visible = (env or {}).get("CUDA_VISIBLE_DEVICES")
    uuids = [d.uuid for d in gpus.devices] if visible is None else [u for u in visible.split(",") if u]
    for device, size in parse_lines(list(lines)).by_device().items():
        match = re.match(r"^cuda(\d+)$", device)
        if match is None:
            continue
        index = int(match.group(1))
        free = gpus.allocate(pid, uuids[index], size) if index < len(uuids) else 0
        if free is not None:
            for line in (
                f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {size / 2**20:.2f} MiB on device {index}: "
                "cudaMalloc failed: out of memory",
                f"alloc_tensor_range: failed to allocate CUDA{index} buffer of size {size}",
                f"llama_model_load: error loading model: unable to allocate CUDA{index} buffer",
            ):
                capture.feed(4, line + "\n")
            error = ValueError("Failed to load model from file")
            return failure_message(error, capture.report(), list(capture.errors))
    return None


async def spawn_fake_worker(
    script: FakeScript, backends: list[FakeLlama], env: dict[str, str] | None = None
) -> tuple[Any, Connection]:
    """A fake worker; `env` is what a real one would start with (CUDA_VISIBLE_DEVICES)."""
    parent, child = Pipe(duplex=True)
    pid = next(_pids)
    return ThreadProcess(lambda: fake_main(child, script, backends, env, pid), pid), parent
