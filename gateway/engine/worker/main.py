"""The worker process: owns one model and decodes up to `runtime.parallel` requests together.

Started with the `spawn` method by `engine/process/`; speaks the messages of `engine/wire.py`. A
worker imports llama_cpp as soon as it starts and then waits for its model, so a spare one can be
started ahead of need. A reader thread takes commands (a cancel reaches the batch between two steps;
tokenizer calls are answered at once); the batch thread validates each request (`validate.py`; its
prompt fits: `Started`, which the gateway waits for before its HTTP 200) and runs the continuous batch of
`batch.py`. The worker exits when its parent goes away (the pipe reaches EOF), or when told to
(`Shutdown`): then, with a prefix store, the batch thread first writes the most valuable cached
prefixes to it (`saved.py`, bounded by `save_max_bytes` and `save_time`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.engine.base import BatchState, ChoiceFinished, Delta, Finished, Started
from gateway.engine.wire import (
    Call,
    Cancel,
    Channel,
    DeviceError,
    Event,
    Failed,
    Generate,
    Load,
    Loaded,
    LoadFailed,
    Pause,
    Result,
    Resume,
    Shutdown,
)
from gateway.engine.worker.backend import Backend
from gateway.engine.worker.batch import Batch
from gateway.engine.worker.embedding import LlamaEmbedder, load_embedding, serve_embeddings
from gateway.engine.worker.load import load, load_speculation
from gateway.engine.worker.logcapture import LogCapture, failure_message
from gateway.engine.worker.media import EncodeCache, ImageFeeder
from gateway.engine.worker.prompt import Render
from gateway.engine.worker.saved import SavedPrefixes, llama_build, open_saved
from gateway.engine.worker.speculation import Speculation
from gateway.engine.worker.validate import Validator
from gateway.errors import GatewayError, internal_error, invalid_request

log = logging.getLogger(__name__)


def main(conn: Connection, env: dict[str, str] | None = None) -> None:
    """Entry point of the worker process. `env` (e.g. CUDA_VISIBLE_DEVICES) is set before llama.cpp
    starts, so the worker sees only the devices it was given."""
    os.environ.update(env or {})
    import llama_cpp  # noqa: F401  (the slow part of a cold start, done before a model is asked for)

    channel = Channel(conn)
    try:
        message = channel.recv()
    except (EOFError, OSError):
        return
    if not isinstance(message, Load):
        return
    config = message.config
    capture = LogCapture(echo=bool(config.get("verbose")))
    capture.install()  # per-device buffer sizes and allocation failures, from llama.cpp's own log
    try:
        if config["embedding"]:
            llm = load_embedding(config)
        else:
            backend, render = load(config)
            speculation = load_speculation(config, backend)
    except Exception as exc:  # anything llama.cpp raises is a load failure to report, not a crash
        report = capture.report()
        channel.send(LoadFailed(failure_message(exc, report, list(capture.errors)), report.to_wire()))
        return
    # A CUDA error after the load aborts the process: tell the parent first that it ran out of memory.
    capture.on_oom = lambda oom: channel.send(DeviceError(oom.device, oom.need, oom.line))
    if config["embedding"]:
        channel.send(Loaded(n_ctx=llm.n_ctx(), pid=os.getpid(), memory=capture.report().to_wire()))
        serve_embeddings(channel, LlamaEmbedder(llm))
    else:
        slots = config.get("parallel", 1)
        saved = open_saved(config, backend, llama_build())
        memory = capture.report().to_wire()
        channel.send(Loaded(backend.n_ctx, os.getpid(), slots=slots, kv_cells=backend.kv_cells, memory=memory))
        Worker(
            channel,
            backend,
            render,
            slots,
            config["repeat_last_n"],
            image_cache=config.get("image_cache", 0),
            speculation=speculation,
            saved=saved,
        ).serve()


_SAVE_AND_EXIT = "save and exit"  # the reader's last word to the batch thread on a Shutdown


class Worker:
    """Commands in, batch steps out. `serve` runs until the parent goes away; tests drive it in a
    thread over a fake backend."""

    def __init__(
        self,
        channel: Channel,
        backend: Backend,
        render: Render,
        slots: int,
        repeat_last_n: int = 64,
        on_exit: Callable[[], None] = lambda: os._exit(0),
        image_cache: int = 64 * 2**20,
        speculation: Speculation | None = None,
        saved: SavedPrefixes | None = None,
    ) -> None:
        self._channel = channel
        self._saved = saved
        self._closing = False  # told to shut down: what the batch still sends goes nowhere
        self._on_exit = on_exit
        self._backend = backend
        self._validate = Validator(backend, render, repeat_last_n)
        self._inbox: queue.SimpleQueue[Generate | Cancel | Pause | Resume | str | None] = queue.SimpleQueue()
        # Evaluates the images prompts reach, encoding them on a thread beside the batch.
        self.images = ImageFeeder(backend, EncodeCache(image_cache), background=True)
        self.batch = Batch(backend, slots, self._event, self._error, self.images, speculation, saved)
        self._usage: BatchState | None = None

    def serve(self) -> None:
        threading.Thread(target=self.read, daemon=True, name="worker-reader").start()
        self.run()

    def run(self) -> None:
        while True:
            # Idle: sleep until a command comes. Busy: take what arrived, between two steps.
            try:
                message = self._inbox.get(block=self.batch.idle)
                while True:
                    if message is None:
                        return
                    if isinstance(message, str):  # _SAVE_AND_EXIT
                        self._save()
                        self._on_exit()
                        return
                    self._handle(message)
                    message = self._inbox.get_nowait()
            except queue.Empty:
                pass
            self.batch.step()
            self._report()

    def stop(self) -> None:
        self._inbox.put(None)

    def read(self) -> None:
        """The reader thread: commands from the parent."""
        while True:
            try:
                message = self._channel.recv()
            except (EOFError, OSError):
                self._exit()
                return
            if isinstance(message, Generate | Cancel | Pause | Resume):
                self._inbox.put(message)
            elif isinstance(message, Call):
                self._answer(message)
            elif isinstance(message, Shutdown):
                if self._saved is None:
                    self._exit()  # unloading means returning the memory now; the OS reclaims it at exit
                else:
                    self._closing = True  # the batch thread saves the prefixes between two steps, then exits
                    self._inbox.put(_SAVE_AND_EXIT)
                return

    def _save(self) -> None:
        """Keep the most valuable cached prefixes on disk (bounded in bytes and time): the last thing a
        worker told to unload does."""
        if self._saved is None:
            return
        try:
            files, written = self._saved.save(self.batch.cached())
        except Exception:  # the unload goes on whatever the disk says
            log.exception("prefix store: saving failed")
            return
        if files:
            log.info("prefix store: %d prefixes saved (%d bytes)", files, written)

    def _exit(self) -> None:
        """The gateway is gone or asked us to go: nobody will read what we produce."""
        self.stop()
        self._on_exit()

    def _answer(self, call: Call) -> None:
        """Tokenizing reads only the vocabulary: answered here, not queued behind generations."""
        try:
            self._channel.send(Result(call.request_id, self._call(call.op, call.argument)))
        except (BrokenPipeError, EOFError):
            self._exit()
        except Exception as exc:
            self._channel.send(Failed(call.request_id, invalid_request(f"{call.op} failed: {exc}", "tokens").to_wire()))

    def _call(self, op: str, argument: Any) -> Any:
        backend = self._backend
        if op == "tokenize":
            return backend.tokenize(str(argument), False)
        if op == "detokenize":
            bad = [t for t in argument if not isinstance(t, int) or not 0 <= t < backend.n_vocab]
            if bad:
                raise ValueError(f"token ids out of range 0..{backend.n_vocab - 1}: {bad[:5]}")
            return backend.detokenize(list(argument))
        raise ValueError(f"unknown call {op!r}")

    def _handle(self, message: Generate | Cancel | Pause | Resume) -> None:
        if isinstance(message, Cancel):
            self.batch.cancel(message.request_id)
            return
        if isinstance(message, Pause):
            self.batch.pause(message.request_id)
            return
        if isinstance(message, Resume):
            self.batch.resume(message.request_id)
            return
        try:
            request = self._validate(message.request_id, message.params)
        except GatewayError as exc:
            self._error(message.request_id, exc)
            return
        except Exception as exc:  # our bug, reported as such, and the worker goes on
            self._error(message.request_id, internal_error(f"{type(exc).__name__}: {exc}"))
            return
        self._event(message.request_id, Started(len(request.prompt)))
        self.batch.submit(request)

    def _event(self, request_id: int, event: Started | Delta | ChoiceFinished | Finished) -> None:
        self._send(Event(request_id, event))

    def _error(self, request_id: int, error: GatewayError) -> None:
        self._send(Failed(request_id, error.to_wire()))

    def _send(self, message: Event | Failed | BatchState) -> None:
        if self._closing:
            return
        try:
            self._channel.send(message)
        except (BrokenPipeError, EOFError, OSError):
            if self._saved is None:
                self._exit()
            else:  # the parent may have sent Shutdown before it closed: the reader saves then, or exits at EOF
                self._closing = True

    def _report(self) -> None:
        batch = self.batch
        usage = BatchState(
            len(batch.running),
            len(batch.waiting),
            batch.kv_committed(),
            self._backend.kv_cells,
            batch.reused_tokens,
            len(batch.paused),
            batch.replayed_tokens,
            drafted_tokens=batch.speculation.drafted,
            accepted_tokens=batch.speculation.accepted,
            restored=self._saved.restored if self._saved is not None else 0,
            restored_tokens=self._saved.restored_tokens if self._saved is not None else 0,
            image_encodes=self.images.cache.encodes,
            image_cache_hits=self.images.cache.hits,
        )
        if usage != self._usage:
            self._usage = usage
            self._send(usage)
