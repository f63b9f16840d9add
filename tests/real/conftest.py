from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.real.server import CLIENT_TIMEOUT, GEMMA, SMOLLM, SMOLLM_Q8, GatewayServer, ensure_models

# Under CI=true no test of the real tier may pass by being skipped (a missing browser, Node.js, server
# or module): every skip there is collected and the session fails, whatever marked it.
_SKIPPED: list[str] = []


def _skip_counts(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _skip_counts(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _skip_counts(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED:
        print(f"\nCI=true: {len(_SKIPPED)} real-tier tests were skipped, which CI counts as a failure:")
        for nodeid in _SKIPPED:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def model(path: Path, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": {"path": str(path), "n_ctx": 512}, "runtime": {"thread_count": 2}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(entry.get(key), dict):
            entry[key].update(value)
        else:
            entry[key] = value
    return entry


def standard_config() -> dict[str, Any]:
    return {
        "gateway": {"memory_budget": "2GiB", "room_wait": 5},
        "models": {
            "smollm2": model(SMOLLM, aliases=["gpt-4o-mini"]),
            "smollm2-q8": model(SMOLLM_Q8),
            "gemma": model(GEMMA, model={"chat_format": "gemma"}),
        },
    }


def one_fits_config() -> dict[str, Any]:
    """A budget with room for one of the two SmolLM2 variants, never both."""
    return {
        "gateway": {"memory_budget": "300MiB", "room_wait": 1, "spare_workers": 0},
        "models": {"smollm2": model(SMOLLM), "smollm2-q8": model(SMOLLM_Q8)},
    }


@pytest.fixture(scope="session", autouse=True)
def _models() -> None:
    ensure_models()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    gateway = GatewayServer(standard_config(), tmp_path_factory.mktemp("gw"))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Any]:
    """Starts servers for one test and stops whatever is left at the end."""
    started: list[GatewayServer] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> GatewayServer:
        gateway = GatewayServer(config, tmp_path, env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
