"""How the application starts a model's worker: the scheduler's engine factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.config import ModelEntry, Settings
from gateway.engine.base import Engine

if TYPE_CHECKING:
    from gateway.engine.process.spares import Spawned

# (model id, the environment a real worker would get: CUDA_VISIBLE_DEVICES) -> a started worker
WorkerSpawn = Callable[[str, dict[str, str] | None], Awaitable["Spawned"]]


class ProcessEngines:
    """Worker-process engines, with spare workers started ahead of need; or, given `spawn` (tests:
    the real worker loop over a fake llama.cpp), each worker started by it and no spares."""

    def __init__(self, settings: Settings, spawn: WorkerSpawn | None) -> None:
        from gateway.engine.process.spares import SparePool

        self._timeout = settings.gateway.load_timeout
        self.prefix_store = settings.gateway.prefix_store  # a reload sets the next loads' (web/services.py)
        self._spawn = spawn
        self.spares = SparePool(0 if spawn else settings.gateway.spare_workers)

    def prefix_usage(self) -> tuple[int, int] | None:
        """Files and bytes in the prefix store, when one is set."""
        from gateway.engine.prefixstore.store import usage

        return None if self.prefix_store is None else usage(self.prefix_store.path)

    def __call__(self, model_id: str, entry: ModelEntry) -> Engine:
        from gateway.engine.process.handle import ProcessEngine

        spawn = self._spawn
        store = self.prefix_store
        if spawn is None:
            return ProcessEngine(model_id, entry, self._timeout, self.spares, prefix_store=store)
        engine = ProcessEngine(
            model_id, entry, self._timeout, spawn=lambda: spawn(model_id, engine.worker_env), prefix_store=store
        )
        return engine
