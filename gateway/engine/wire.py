"""The parent <-> worker protocol: a few typed messages over one channel.

parent -> worker: `Load` first, then `Generate` | `Cancel` | `Pause` | `Resume` | `Call` | `Embed` | `Shutdown`.
worker -> parent: `Loaded` | `LoadFailed`, then per request `Event` (Started, Delta, ChoiceFinished,
Finished: the events a `Generation` yields), `Failed` (a GatewayError on the wire), `Result` (answer
to a call or an embedding), and `BatchState` whenever the worker's batch changes (running and waiting
requests, KV cells in use: the gauges routers and autoscalers read).

A request's events arrive in order: Started (the prompt fits; sent before the HTTP 200), Deltas,
ChoiceFinished per choice when n > 1, then Finished; or Failed at any point instead of the rest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway.engine.base import BatchState, ChoiceFinished, Delta, Finished, GenerationParams, Started


@dataclass(frozen=True)
class Load:
    config: dict[str, Any]  # engine/process/launch.py worker_config()


@dataclass(frozen=True)
class Generate:
    request_id: int
    params: GenerationParams


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class Pause:
    """Set the request aside (preempted for a more urgent one): no steps until `Resume`."""

    request_id: int


@dataclass(frozen=True)
class Resume:
    request_id: int


@dataclass(frozen=True)
class Call:
    """Tokenizer work answered at once, not queued behind generations: tokenize | detokenize."""

    request_id: int
    op: str
    argument: Any


@dataclass(frozen=True)
class Embed:
    request_id: int
    inputs: list[str | list[int]]


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Loaded:
    n_ctx: int  # context per request
    pid: int
    slots: int = 1  # requests decoded together
    kv_cells: int = 0  # the shared KV pool, in tokens
    memory: dict[str, Any] | None = None  # loadlog.LoadReport wire form: bytes llama.cpp allocated per device


@dataclass(frozen=True)
class LoadFailed:
    reason: str
    memory: dict[str, Any] | None = None  # as in Loaded, up to the failure


@dataclass(frozen=True)
class DeviceError:
    """llama.cpp reported running out of device memory after the load (the worker is about to abort)."""

    device: str | None  # the worker's own name (cuda0: its first visible GPU); None when not said
    need: int | None
    line: str


@dataclass(frozen=True)
class Event:
    request_id: int
    event: Started | Delta | ChoiceFinished | Finished


@dataclass(frozen=True)
class Failed:
    request_id: int
    error: dict[str, Any]  # GatewayError.to_wire()


@dataclass(frozen=True)
class Result:
    request_id: int
    value: Any


ToWorker = Load | Generate | Cancel | Pause | Resume | Call | Embed | Shutdown
FromWorker = Loaded | LoadFailed | Event | Failed | Result | BatchState | DeviceError


class Channel:
    """One end of the pipe. Sends are serialised: the worker's reader and batch threads both answer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: ToWorker | FromWorker) -> None:
        with self._lock:
            self.conn.send(message)

    def recv(self) -> Any:
        return self.conn.recv()

    def poll(self) -> bool:
        return self.conn.poll()

    def fileno(self) -> int:
        return self.conn.fileno()

    def close(self) -> None:
        self.conn.close()
