"""Who is told about model lifecycle events (the metrics implement `Observer`)."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    """Told about model lifecycle events (metrics implement this)."""

    def model_loaded(self, model: str, seconds: float) -> None: ...
    def model_load_failed(self, model: str) -> None: ...
    def model_unloaded(self, model: str, reason: str) -> None: ...
    def worker_crashed(self, model: str) -> None: ...


class NoObserver:
    def model_loaded(self, model: str, seconds: float) -> None:
        pass

    def model_load_failed(self, model: str) -> None:
        pass

    def model_unloaded(self, model: str, reason: str) -> None:
        pass

    def worker_crashed(self, model: str) -> None:
        pass
