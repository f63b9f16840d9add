"""Parent-side handle of a worker process (its messages: `engine/wire.py`; how it starts: `spares.py`;
what it is told to load, how its exit reads and how it is ended: `launch.py`).

The pipe is read from the event loop (`pipe.py`), so no thread sits between a token and the
client. A worker that exits unexpectedly fails every generation it held, and the scheduler is told.

The handle is one state machine: the dispatch of the worker's messages, the load future, the waiting
generations and calls, the death that fails them and the memory figures a message updates all read
and write the same few fields.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config import ModelEntry, PrefixStore
from gateway.engine.base import BatchState, DevicePlacement, Engine, Finished, Generation, GenerationParams
from gateway.engine.loadlog import LoadReport, OutOfMemory, pool_of
from gateway.engine.process.launch import end_process, exit_description, process_rss, worker_config
from gateway.engine.process.pipe import LoopPipe
from gateway.engine.process.spares import SparePool, Spawned, spawn_worker
from gateway.engine.wire import (
    Call,
    Cancel,
    DeviceError,
    Embed,
    Event,
    Failed,
    FromWorker,
    Generate,
    Load,
    Loaded,
    LoadFailed,
    Pause,
    Result,
    Resume,
    Shutdown,
    ToWorker,
)
from gateway.errors import GatewayError, load_failed, model_unloaded, worker_died

log = logging.getLogger(__name__)


class ProcessEngine(Engine):
    def __init__(
        self,
        model_id: str,
        entry: ModelEntry,
        load_timeout: float = 300.0,
        spares: SparePool | None = None,
        spawn: Callable[[], Awaitable[Spawned]] | None = None,
        *,
        env: dict[str, str] | None = None,
        placement: dict[str, Any] | None = None,
        prefix_store: PrefixStore | None = None,
    ) -> None:
        """`env` (CUDA_VISIBLE_DEVICES...) and `placement` (llama.cpp's n_gpu_layers, tensor_split,
        main_gpu: see placement.worker_environment and llama_arguments) put the model on its devices;
        a worker given an environment is started for it, since a spare's GPU runtime is set up already.
        `spawn`: how a worker starts (tests start the real worker loop over a fake llama.cpp in a thread).
        `prefix_store`: where the worker keeps its most used prefixes when it unloads."""
        super().__init__()
        self.model_id = model_id
        self._entry = entry
        self._env = env
        self._placement = placement
        self._prefix_store = prefix_store
        self._load_timeout = load_timeout
        self._spares = spares
        self._spawn = spawn or (lambda: spawn_worker(self._env))
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: LoopPipe | None = None
        self._loaded: asyncio.Future[Loaded] | None = None
        self._batch: BatchState | None = None  # the worker's batch, as last reported
        self._generations: dict[int, Generation] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self._load_failed = False  # the worker reported a failed load: it exits next, as it should
        self._stop_task: asyncio.Future[None] | None = None
        self._dead_reason: str | None = None
        self._dead_error: GatewayError | None = None  # what requests get once the worker is gone
        self._peak_rss: int | None = None
        # What llama.cpp allocated per device (the worker's own names: cuda0 = its first visible GPU),
        # after a load, or after a failed one (then `oom` says which allocation ran out).
        self.load_report: LoadReport | None = None
        self._device_error: OutOfMemory | None = None  # a CUDA OOM the running worker reported

    def place(self, placement: DevicePlacement) -> None:
        super().place(placement)
        self._env = placement.env
        self._placement = placement.llama

    @property
    def worker_env(self) -> dict[str, str] | None:
        """The environment the worker starts with (CUDA_VISIBLE_DEVICES for a GPU placement)."""
        return self._env

    def memory_report(self) -> LoadReport | None:
        return self.load_report

    def _pool_of(self, device: str | None) -> str | None:
        """The gateway's pool for one of the worker's own device names (its cuda0 is its first GPU)."""
        devices = list(self.placement.devices) if self.placement is not None else []
        if device is None:
            return devices[0] if len(devices) == 1 else None
        return pool_of(device, devices)

    def out_of_memory(self) -> OutOfMemory | None:
        """The failed allocation, its device named as the gateway's pool."""
        oom = super().out_of_memory()
        if self._device_error is not None or oom is None:
            return self._device_error
        return OutOfMemory(self._pool_of(oom.device), oom.need, oom.line)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._dead_reason is None and self._process is not None and not self._stopping

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        # A load stopped while waiting (a forced unload) leaves nobody to read how it ended.
        self._loaded.add_done_callback(lambda done: done.cancelled() or done.exception())
        use_spare = self._spares is not None and self._env is None
        process, conn = await (self._spares.take() if self._spares and use_spare else self._spawn())
        self._process = process
        self._pipe = LoopPipe(conn, self._dispatch, lambda: self._on_dead(exit_description(self._process)))
        self._send(Load(worker_config(self._entry, self._placement, self._prefix_store)))
        try:
            info = await asyncio.wait_for(asyncio.shield(self._loaded), self._load_timeout)
        except TimeoutError:
            await self.stop()
            raise load_failed(self.model_id, f"loading took longer than {self._load_timeout:.0f}s", None) from None
        except GatewayError:
            await self.stop()
            raise
        log.info(
            "model %s loaded in worker pid %s (n_ctx=%s, parallel=%s, KV cells=%s)",
            self.model_id, process.pid, info.n_ctx, info.slots, info.kv_cells,
        )  # fmt: skip
        self._batch = BatchState(0, 0, 0, info.kv_cells)
        self._sample_memory()

    def generate(self, params: GenerationParams) -> Generation:
        generation = Generation(next(self._ids), self._cancel, params.n, self._pause)
        if not self.alive or self._pipe is None:
            generation.feed(self._gone())
            return generation
        self._generations[generation.request_id] = generation
        self._send(Generate(generation.request_id, params))
        return generation

    async def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = await self._call("tokenize", text)
        return tokens

    async def detokenize(self, tokens: list[int]) -> str:
        text: str = await self._call("detokenize", tokens)
        return text

    async def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        vectors, tokens = await self._call("embed", inputs)
        self._sample_memory()  # a long input grows llama.cpp's output buffer (one row per token)
        return vectors, tokens

    async def _call(self, op: str, argument: Any) -> Any:
        """Ask the worker something and wait for its answer. Embedding queues with generations;
        tokenizer calls are answered at once."""
        if not self.alive:
            raise self._gone()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        self._send(Embed(call_id, argument) if op == "embed" else Call(call_id, op, argument))
        try:
            return await future
        finally:
            self._calls.pop(call_id, None)

    def _cancel(self, request_id: int) -> None:
        if self._generations.pop(request_id, None) is not None:
            self._send(Cancel(request_id))

    def _pause(self, request_id: int, paused: bool) -> None:
        if request_id in self._generations:
            self._send(Pause(request_id) if paused else Resume(request_id))

    def _send(self, message: ToWorker) -> None:
        if self._pipe is not None:
            self._pipe.send(message)

    def batch_state(self) -> BatchState | None:
        return self._batch if self.alive else None

    def measured_bytes(self) -> int | None:
        return self._peak_rss

    def _sample_memory(self) -> None:
        if self.pid is None:
            return
        rss = process_rss(self.pid)
        if rss is not None:
            self._peak_rss = max(rss, self._peak_rss or 0)

    def _dispatch(self, message: FromWorker) -> None:
        if isinstance(message, BatchState):
            self._batch = message
            return
        if isinstance(message, DeviceError):
            self._device_error = OutOfMemory(self._pool_of(message.device), message.need, message.line)
            return
        if isinstance(message, Loaded | LoadFailed):
            self.load_report = LoadReport.from_wire(message.memory or {}) if message.memory is not None else None
            self._load_failed = isinstance(message, LoadFailed)
            if self._loaded and not self._loaded.done():
                if isinstance(message, Loaded):
                    self._loaded.set_result(message)
                else:
                    self._loaded.set_exception(load_failed(self.model_id, message.reason, None))
            return
        call = self._calls.get(message.request_id)
        if call is not None:
            if not call.done():
                if isinstance(message, Result):
                    call.set_result(message.value)
                elif isinstance(message, Failed):
                    call.set_exception(GatewayError.from_wire(message.error))
            return
        generation = self._generations.get(message.request_id)
        if generation is None:
            return  # cancelled: the worker's last words about it are not needed
        if isinstance(message, Event):
            if isinstance(message.event, Finished):
                del self._generations[message.request_id]
                self._sample_memory()
            generation.feed(message.event)
        elif isinstance(message, Failed):
            del self._generations[message.request_id]
            generation.feed(GatewayError.from_wire(message.error))

    def _on_dead(self, reason: str, unloaded: str | None = None) -> None:
        """The worker is gone (`unloaded`: stopped on purpose, and why): fail what still waits on it."""
        if self._dead_reason is not None:
            return
        oom = self._device_error
        if oom is not None:  # the worker aborted on a CUDA error it logged first
            reason = f"out of memory on {oom.device or 'its GPU'} ({oom.line}); {reason}"
        self._dead_reason = reason
        self._detach()
        if unloaded is not None and oom is None:
            error = model_unloaded(self.model_id, unloaded, "this request was running")
        else:
            error = worker_died(self.model_id, reason)
        self._dead_error = error
        if self._loaded and not self._loaded.done():
            self._loaded.set_exception(load_failed(self.model_id, f"the worker exited while loading ({reason})", None))
        for generation in self._generations.values():
            generation.feed(error)
        self._generations.clear()
        for call in self._calls.values():
            if not call.done():
                call.set_exception(error)
        if self._stopping:
            return
        if self._load_failed:  # `start` answers for the failure the worker reported before it ended
            log.info("worker for model %s exited after its failed load (%s)", self.model_id, reason)
            return
        log.warning("worker for model %s stopped unexpectedly: %s", self.model_id, reason)
        self._report_exit(reason)

    def _gone(self) -> GatewayError:
        """The error for a request that comes after the worker has gone."""
        return self._dead_error or worker_died(self.model_id, self._dead_reason or "not running")

    def _detach(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    async def stop(self, reason: str | None = None) -> None:
        """Ends the worker. Calls that overlap (a failed load's own cleanup and the scheduler's) share
        one stop: a second one joining a process the first has closed would raise."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(reason))
        await asyncio.shield(self._stop_task)

    async def _stop(self, reason: str | None) -> None:
        self._stopping = True
        process = self._process
        if process is None:
            return
        self._send(Shutdown())
        self._on_dead("stopped", reason)
        saving = self._prefix_store.save_time if self._prefix_store is not None else 0.0
        await end_process(process, self.model_id, saving)
        self._process = None
