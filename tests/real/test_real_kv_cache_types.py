"""KV cache types on real llama.cpp: the cache llama.cpp allocates is the estimate's, a worker's
measured memory stays within the estimate's usual margin, and answers stay valid, for each type."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from gateway.config import ModelEntry
from gateway.engine.loadlog import HOST
from gateway.gguf.header import read_gguf_info
from gateway.memory.estimate import cache_types, estimate
from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer
from tests.real.test_real_memory import load_and_measure

pytestmark = pytest.mark.real
MiB = 2**20
TYPES = ("f16", "q8_0", "q4_0")


def cached(cache_type: str, **extra: Any) -> dict[str, Any]:
    return model(SMOLLM, model={"cache_type_k": cache_type, "cache_type_v": cache_type, **extra})


@pytest.mark.parametrize("cache_type", TYPES)
def test_llama_cpp_allocates_the_estimates_cache(cache_type: str) -> None:
    entry = ModelEntry.model_validate(cached(cache_type, n_ctx=1024))
    report, rss = asyncio.run(load_and_measure(entry))
    assert report is not None and rss is not None
    kv = sum(b.bytes for b in report.buffers if b.kind == "KV" and b.device == HOST)
    expected = estimate(read_gguf_info(SMOLLM), 1024, cache=cache_types(entry)).kv_cache
    assert abs(kv - expected) <= 0.01 * MiB  # llama.cpp logs sizes rounded to 0.01 MiB
    assert kv + sum(b.bytes for b in report.buffers if b.kind == "model") <= rss


def test_measured_memory_is_within_the_estimates_margin_for_each_type(tmp_path: Path) -> None:
    """`gateway check --measure` at a context long enough for the cache to matter (SmolLM2 at 4096:
    f16 90 MiB, q8_0 48, q4_0 25): each within 10% of the estimate and not below, as for f16, and
    each type's worker measurably smaller than the one before."""
    config = {
        "gateway": {"memory_budget": "2GiB", "spare_workers": 0},
        "models": {t: cached(t, n_ctx=4096) for t in TYPES},
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path), "--measure"],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)  # the figures, for the record (pytest -s)
    found = re.findall(r"^  (\S+) on host: estimate .*, measured ([\d.]+) MiB \(([-+][\d.]+)%\)$", result.stdout, re.M)
    measured = {m: float(size) for m, size, _ in found}
    errors = {m: float(error) for m, _, error in found}
    assert set(errors) == set(TYPES), result.stdout
    assert all(0 <= error <= 10 for error in errors.values()), errors
    assert measured["f16"] - measured["q8_0"] > 30 and measured["q8_0"] - measured["q4_0"] > 15, measured


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = {"gateway": {"memory_budget": "2GiB"}, "models": {t: cached(t) for t in TYPES}}
    gateway = GatewayServer(config, tmp_path_factory.mktemp("kvtypes"))
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("cache_type", TYPES)
def test_answers_stay_valid_with_each_cache_type(server: GatewayServer, cache_type: str) -> None:
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    chat = client.chat.completions.create(
        model=cache_type,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert (chat.choices[0].message.content or "").strip()
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    structured = client.chat.completions.create(
        model=cache_type,
        messages=[{"role": "user", "content": "Give the largest city of France and its population as JSON."}],
        max_tokens=96,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    answer = json.loads(structured.choices[0].message.content or "")
    assert set(answer) == {"city", "population"}
    assert isinstance(answer["city"], str) and 0 <= answer["population"] <= 99999999


def test_an_embedding_model_runs_a_quantized_cache() -> None:
    """llama-cpp-python's `Llama` takes the types; with a quantized V the worker runs flash attention
    (ModelEntry.flash_attention), which llama.cpp requires, and the vectors stay unit-length."""
    from gateway.engine.process.handle import ProcessEngine

    entry = ModelEntry.model_validate({**cached("q8_0", n_ctx=256, pooling="mean"), "embedding": True})
    assert entry.flash_attention == "on"

    async def embed() -> tuple[list[list[float]], int]:
        engine = ProcessEngine("embed", entry, spares=None)
        await engine.start()
        try:
            return await engine.embed(["The capital of France is Paris.", "Bonjour"])
        finally:
            await engine.stop()

    vectors, tokens = asyncio.run(embed())
    assert len(vectors) == 2 and tokens > 0
    assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)
    assert vectors[0] != vectors[1]
