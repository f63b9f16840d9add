"""Shared by the scheduler tests: a scheduler over fake workers, with a clock the test moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config import parse_settings
from gateway.memory.facts import inspect_models
from gateway.scheduler import Hold, Scheduler
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers

MB = 2**20


class Clock:
    """What LRU order and TTLs read: time moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(
    make_config: Any,
    tmp_path: Path,
    models: dict[str, dict[str, Any]],
    *,
    fits: int = 10,
    gateway: dict[str, Any] | None = None,
    scripts: dict[str, FakeScript] | None = None,
) -> tuple[Scheduler, FakeWorkers, Clock]:
    """A budget with room for `fits` of the largest model, and not one more."""
    settings = parse_settings(make_config(models, gateway=gateway), tmp_path)
    facts = inspect_models(settings)
    one = max(f.estimate.total for f in facts.values())
    workers = FakeWorkers(scripts)
    clock = Clock()
    return Scheduler(settings, facts, workers.engine, budget=one * fits + MB // 2, clock=clock), workers, clock


async def enter(hold: Hold) -> Hold:
    """A hold entered by hand (released by the test)."""
    return await hold.__aenter__()
