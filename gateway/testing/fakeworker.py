"""The real worker loop over `FakeLlama`, in a thread that stands in for the worker process: the
parent handle, the wire messages, the channel, the worker and its batch all run as in production.

`FakeWorkers` is what fast tests give the gateway: `spawn(model_id)` starts a fake worker scripted
for that model (the app's spawn seam), `engine(model_id, entry)` the real parent handle over one
(the scheduler's engine factory). Each `FakeWorker` records the messages that crossed its pipe.
The thread and pipe that stand in for the process are `fakeprocess.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from gateway.config import ModelEntry
from gateway.engine import wire
from gateway.engine.base import Finished
from gateway.engine.loadlog import parse_lines
from gateway.engine.process.handle import ProcessEngine
from gateway.engine.process.spares import Spawned
from gateway.engine.worker.embedding import serve_embeddings
from gateway.engine.worker.logcapture import LogCapture, failure_message
from gateway.engine.worker.main import Worker
from gateway.engine.worker.saved import open_saved
from gateway.engine.worker.speculation import Speculation
from gateway.testing.fakellama import FakeEmbedder, FakeLlama, FakeScript
from gateway.testing.fakeprocess import RecordingChannel, ThreadProcess, hang_up

if TYPE_CHECKING:
    from gateway.testing.fakenvml import FakeGpus

_pids = itertools.count(1_000_000)  # above any pid_max: no real process's memory is measured


@dataclass
class FakeWorker:
    """One fake worker process: its script, its llama.cpp once loaded, and what crossed its pipe."""

    model_id: str
    script: FakeScript
    env: dict[str, str] | None = None  # what a real worker would start with (CUDA_VISIBLE_DEVICES)
    backends: list[FakeLlama] = field(default_factory=list)  # its llama.cpp, once loaded (a caller may share one list)
    sent: list[wire.FromWorker] = field(default_factory=list)
    received: list[wire.ToWorker] = field(default_factory=list)
    process: ThreadProcess | None = None
    pid: int = field(default_factory=lambda: next(_pids))

    @property
    def loaded(self) -> bool:
        return any(isinstance(m, wire.Loaded) for m in self.sent)

    @property
    def alive(self) -> bool:
        return self.loaded and self.process is not None and self.process.is_alive()

    def cancelled(self) -> list[int]:
        """Requests the parent cancelled."""
        return [m.request_id for m in list(self.received) if isinstance(m, wire.Cancel)]

    def finished(self) -> dict[int, Finished]:
        """Requests the worker ended, and how (finish reason `cancelled`: a cancel it obeyed)."""
        return {
            m.request_id: m.event
            for m in list(self.sent)
            if isinstance(m, wire.Event) and isinstance(m.event, Finished)
        }

    async def outcome(self, request_id: int) -> Finished:
        """How the worker ended a request, once it has (a cancel reaches its batch between two steps)."""
        await until(lambda: request_id in self.finished(), f"request {request_id} did not end")
        return self.finished()[request_id]

    def generating(self) -> list[int]:
        """Requests submitted and not yet ended."""
        ended = {m.request_id for m in list(self.sent) if isinstance(m, wire.Failed)} | set(self.finished())
        return [m.request_id for m in list(self.received) if isinstance(m, wire.Generate) and m.request_id not in ended]

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def start(self) -> Spawned:
        parent, child = Pipe(duplex=True)
        self.process = ThreadProcess(lambda: self._main(child), child, self.pid)
        return self.process, parent  # type: ignore[return-value]

    def _main(self, conn: Connection) -> None:
        channel = RecordingChannel(conn, self.sent, self.received)
        try:
            self._serve(channel, conn)
        finally:
            hang_up(conn)
            conn.close()
            if self.script.gpus is not None:
                self.script.gpus.release(self.pid)  # as the driver takes back an exited process's memory

    def _serve(self, channel: wire.Channel, conn: Connection) -> None:
        try:
            load = channel.recv()
        except (EOFError, OSError):
            return
        assert isinstance(load, wire.Load)
        config, script = load.config, self.script
        if script.load_delay and conn.poll(script.load_delay):
            return  # stopped (or gone) while loading
        if script.fail_load:
            channel.send(wire.LoadFailed(script.fail_load))
            return
        capture = LogCapture()
        failure = (
            _allocate(script.gpus, self.pid, self.env, capture, script.load_log) if script.gpus is not None else None
        )
        if failure is not None:
            channel.send(wire.LoadFailed(failure, capture.report().to_wire()))
            return
        for line in script.load_log:  # llama.cpp logs a buffer once it is allocated
            capture.feed(2, line + "\n")
        memory = capture.report().to_wire()
        if config["embedding"]:
            embedder = FakeEmbedder(config["n_ctx"])
            channel.send(wire.Loaded(n_ctx=embedder.n_ctx, pid=self.pid, memory=memory))
            serve_embeddings(channel, embedder, on_exit=lambda: None)
            return
        slots = config.get("parallel", 1)
        backend = FakeLlama(n_ctx=config["n_ctx"], slots=slots, n_batch=min(config["n_batch"], 64), script=script)
        self.backends.append(backend)
        backend.log = capture.feed
        if script.gpus is not None and script.decode_bytes:
            gpus, first = script.gpus, _visible(script.gpus, self.env)[0]

            def first_decode() -> None:
                if gpus.allocate(self.pid, first, script.decode_bytes) is not None:
                    capture.feed(4, "CUDA error: the resource allocation failed\n")  # cuBLAS's, then abort
                    raise SystemExit("fake CUDA error")

            backend.on_first_decode = first_decode
        capture.on_oom = lambda oom: channel.send(wire.DeviceError(oom.device, oom.need, oom.line))
        channel.send(
            wire.Loaded(n_ctx=backend.n_ctx, pid=self.pid, slots=slots, kv_cells=backend.kv_cells, memory=memory)
        )
        cache = config.get("image_cache", 0)
        # n-gram drafts run on the fake as on llama.cpp (a draft model needs real weights: real tier).
        ngram = (config.get("speculative") or {}).get("ngram")
        spec = Speculation({"ngram": ngram} if ngram else None)
        saved = open_saved(config, backend, "fake llama.cpp")
        worker = Worker(
            channel, backend, backend.render, slots, config["repeat_last_n"], lambda: None, cache, spec, saved
        )
        threading.Thread(target=worker.read, daemon=True, name="fake-worker-reader").start()
        worker.run()


def _allocate(
    gpus: FakeGpus, pid: int, env: dict[str, str] | None, capture: LogCapture, lines: tuple[str, ...]
) -> str | None:
    """Take on the fake GPUs what the load's log lines say, per device the worker sees; a device
    without room fails the load as llama.cpp does (its log lines, then llama-cpp-python's ValueError)."""
    uuids = _visible(gpus, env)
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
            error = ValueError("wire.Failed to load model from file")
            return failure_message(error, capture.report(), list(capture.errors))
    return None


def _visible(gpus: FakeGpus, env: dict[str, str] | None) -> list[str]:
    """The UUIDs of the fake GPUs a worker sees, in its own order (CUDA0 first)."""
    visible = (env or {}).get("CUDA_VISIBLE_DEVICES")
    return [d.uuid for d in gpus.devices] if visible is None else [u for u in visible.split(",") if u]


async def until(condition: Callable[[], bool], failure: str, timeout: float = 10.0) -> None:
    """Wait for what a worker thread does: its pipe is read and written apart from the event loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(failure)
        await asyncio.sleep(0.005)


class FakeWorkers:
    """Starts fake workers, scripted per model (`default` for a model without a script)."""

    def __init__(
        self,
        scripts: dict[str, FakeScript] | None = None,
        load_timeout: float = 30.0,
        *,
        default: FakeScript | None = None,
    ) -> None:
        self.scripts = scripts or {}
        self.default = default or FakeScript()
        self.workers: list[FakeWorker] = []
        self._load_timeout = load_timeout

    async def spawn(self, model_id: str, env: dict[str, str] | None = None) -> Spawned:
        worker = FakeWorker(model_id, self.scripts.get(model_id, self.default), env=env)
        self.workers.append(worker)
        return worker.start()

    def engine(self, model_id: str, entry: ModelEntry) -> ProcessEngine:
        """The real parent handle over a fake worker: an `EngineFactory`."""
        engine = ProcessEngine(
            model_id, entry, self._load_timeout, spawn=lambda: self.spawn(model_id, engine.worker_env)
        )
        return engine

    @property
    def loads(self) -> dict[str, int]:
        """Workers started, per model."""
        counts: dict[str, int] = {}
        for worker in self.workers:
            counts[worker.model_id] = counts.get(worker.model_id, 0) + 1
        return counts

    @property
    def backends(self) -> list[FakeLlama]:
        """The fake llama.cpp of every worker that loaded a model, in load order."""
        return [backend for worker in self.workers for backend in worker.backends]

    def live(self) -> list[str]:
        """Models of the workers loaded and running, oldest worker first."""
        return [w.model_id for w in self.workers if w.alive]

    def of(self, engine: Any) -> FakeWorker:
        """The worker beneath a parent handle."""
        return next(w for w in self.workers if w.process is not None and w.process.pid == engine.pid)

    async def crash(self, engine: Any) -> None:
        """Kill the worker beneath `engine` and wait until its parent handle has noticed."""
        self.of(engine).kill()
        await until(lambda: not engine.alive, "the parent handle did not notice its worker's death")


async def spawn_fake_worker(
    script: FakeScript, backends: list[FakeLlama], env: dict[str, str] | None = None
) -> Spawned:
    """One fake worker outside a `FakeWorkers`; its llama.cpp is appended to `backends` once loaded;
    `env` is what a real one would start with (CUDA_VISIBLE_DEVICES)."""
    return FakeWorker("m", script, env=env, backends=backends).start()
