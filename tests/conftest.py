from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ggufgen import write_tiny_gguf
from tests.servers import postgres_schema, redis_prefix


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def make_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A settings document whose models all point at tiny GGUF files in tmp_path."""

    def make(models: dict[str, dict[str, Any]], gateway: dict[str, Any] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"models": {}}
        if gateway:
            doc["gateway"] = gateway
        for name, extra in models.items():
            path = tmp_path / f"{name}.gguf"
            if not path.exists():
                write_tiny_gguf(path, chat_template=extra.pop("_template", "{{ messages }}"))
            entry = {"model": {"path": str(path), "n_ctx": 64}}
            for key, value in extra.items():
                if key == "model":
                    entry["model"].update(value)
                else:
                    entry[key] = value
            doc["models"][name] = entry
        return doc

    return make


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of this test's own (skipped where PostgreSQL is absent; failed under CI=true)."""
    yield from postgres_schema()


@pytest.fixture
def redis_key_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own (skipped where Redis is absent; failed under CI=true)."""
    yield from redis_prefix()
