"""Images through the whole gateway over fake workers: remote URLs fetched where the operator allows,
a corrupt image or a failing encoder costs no other stream anything, the worker's counters reach
/metrics; and what the gateway sends the worker (pixels scaled to the projector's reach) and counts
for the projector in each memory pool."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.images import limits
from gateway.images.decode import Image
from gateway.memory.options import projector_need
from gateway.memory.planner import Placement
from gateway.serving.images import for_projector
from gateway.testing.fakellama import IMAGE_TOKENS, FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.test_images import CORRUPT, PNG, image_server, image_url  # noqa: F401  (a fixture)
from tests.ggufgen import write_tiny_projector


@pytest.fixture
def gateway(make_config: Any, tmp_path: Path, image_server: str) -> Iterator[tuple[TestClient, str]]:  # noqa: F811
    write_tiny_projector(tmp_path / "p.gguf", 64)
    models = {
        "seer": {"model": {"mmproj": "p.gguf", "n_ctx": 256}, "runtime": {"parallel": 2}},
        "broken": {"model": {"mmproj": "p.gguf", "n_ctx": 256}, "runtime": {"parallel": 2}},
    }
    doc = make_config(models, {"max_body_bytes": "32MiB", "image_fetch": {"allow": ["127.0.0.1"]}})
    scripts = {
        "seer": FakeScript(reply_tokens=30, step_delay=0.005),
        "broken": FakeScript(reply_tokens=30, step_delay=0.005, fail_encode=True),
    }
    app = create_app(parse_settings(doc, tmp_path), spawn=FakeWorkers(scripts).spawn, budget=2**40)
    with TestClient(app) as client:
        yield client, image_server


def chat(client: TestClient, model: str, *parts: dict[str, Any], **extra: Any) -> Any:
    content = [{"type": "text", "text": "What is this?"}, *parts]
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


def test_an_allowed_remote_image_is_fetched_and_read(gateway: tuple[TestClient, str]) -> None:
    client, server = gateway
    inline = chat(client, "seer", image_url(PNG)).json()
    remote = chat(client, "seer", image_url(f"{server}/cat.png"))
    assert remote.status_code == 200, remote.text
    assert remote.json()["usage"]["prompt_tokens"] == inline["usage"]["prompt_tokens"]
    missing = chat(client, "seer", image_url(f"{server}/nothing.png"))
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages[0].content[1]"


def stream_beside(client: TestClient, model: str, during: Any) -> tuple[list[str], Any]:
    """A streamed text answer of 30 tokens, with `during()` run once its first piece has arrived."""
    pieces: list[str] = []
    result: list[Any] = []
    body = {"model": model, "messages": [{"role": "user", "content": "count"}], "stream": True, "max_tokens": 30}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            pieces.append(choice["delta"].get("content") or "")
            if len(pieces) == 2:
                thread = threading.Thread(target=lambda: result.append(during()))
                thread.start()
        thread.join()
    return pieces, result[0]


def test_a_corrupt_image_is_a_400_and_a_running_stream_goes_on(gateway: tuple[TestClient, str]) -> None:
    client, _ = gateway
    pieces, corrupt = stream_beside(client, "seer", lambda: chat(client, "seer", image_url(CORRUPT)))
    assert corrupt.status_code == 400 and corrupt.json()["error"]["code"] == "invalid_image"
    assert "".join(pieces).count("tok") == 30


def test_a_failing_encoder_fails_its_request_alone(gateway: tuple[TestClient, str]) -> None:
    client, _ = gateway
    pieces, failed = stream_beside(client, "broken", lambda: chat(client, "broken", image_url(PNG)))
    assert failed.status_code == 500 and "image" in failed.json()["error"]["message"]
    assert "".join(pieces).count("tok") == 30
    assert chat(client, "broken").status_code == 200  # the worker lives on


def test_encodes_and_cache_hits_reach_metrics(gateway: tuple[TestClient, str]) -> None:
    client, _ = gateway
    for system in ("one", "two"):  # the same image after another prefix: encoded once, then from the cache
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": "What?"}, image_url(PNG)]},
        ]
        assert client.post("/v1/chat/completions", json={"model": "seer", "messages": messages}).status_code == 200
    text = client.get("/metrics").text
    assert 'gateway_image_encodes_total{model="seer"} 1.0' in text
    assert 'gateway_image_cache_hits_total{model="seer"} 1.0' in text


def test_the_worker_gets_pixels_scaled_to_the_projectors_reach() -> None:
    small = Image(3, 2, bytes(range(18)), "PNG", "d" * 64)
    assert for_projector(small) == {"digest": "d" * 64, "width": 3, "height": 2, "rgb": bytes(range(18))}
    wide = Image(4096, 8, b"\x80" * (4096 * 8 * 3), "PNG", hashlib.sha256(b"w").hexdigest())
    scaled = for_projector(wide)
    assert (scaled["width"], scaled["height"]) == (limits.MAX_PROJECTOR_SIDE, 4)
    assert len(scaled["rgb"]) == limits.MAX_PROJECTOR_SIDE * 4 * 3 and scaled["digest"] == wide.digest


def test_the_projector_counts_in_the_pool_it_sits_in(make_config: Any, tmp_path: Path) -> None:
    from gateway.memory.facts import inspect_model

    projector = write_tiny_projector(tmp_path / "p.gguf", 64)
    doc = make_config({"seer": {"model": {"mmproj": "p.gguf", "image_cache": "8MiB"}}})
    entry = parse_settings(doc, tmp_path).models["seer"]
    facts = inspect_model(entry)
    assert facts.projector is not None and facts.projector.tensor_bytes > 0
    weights = facts.projector.tensor_bytes
    on_gpu = projector_need(entry, facts, Placement(devices=("cuda0", "cuda1"), split=(0.5, 0.5), n_gpu_layers=-1))
    assert on_gpu.as_dict() == {"cuda0": weights, "host": 8 * 2**20}
    on_host = projector_need(entry, facts, Placement())
    assert on_host.as_dict() == {"host": weights + 8 * 2**20}
    assert projector_need(entry, replace(facts, projector=None), Placement()).as_dict() == {}
    assert projector.stat().st_size >= weights
    assert IMAGE_TOKENS == 4


def test_a_fetch_goes_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch, image_server: str) -> None:  # noqa: F811
    """The name is resolved once, checked, and the connection made to that address: a second lookup
    (which DNS rebinding would answer differently) never happens. `images.test` resolves nowhere else."""
    import anyio

    from gateway.config import ImageFetch
    from gateway.images import remote

    port = image_server.rsplit(":", 1)[1]
    lookups: list[str] = []

    async def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(remote, "resolve", resolve)
    policy = ImageFetch(allow=["images.test"])  # a loopback address: allowed by name
    image = anyio.run(remote.fetch_image, f"http://images.test:{port}/cat.png", policy, "messages[0].content[0]")
    assert (image.width, image.height) == (5, 5) and lookups == ["images.test"]


def test_a_gpu_placement_needs_the_projector_on_its_first_device(make_config: Any, tmp_path: Path) -> None:
    from gateway.memory.facts import inspect_model
    from gateway.memory.options import model_options, pools_for
    from gateway.memory.pools import HOST, Device, Vector

    write_tiny_projector(tmp_path / "p.gguf", 64)
    models = {"seer": {"model": {"mmproj": "p.gguf", "n_gpu_layers": -1}}, "text": {"model": {"n_gpu_layers": -1}}}
    settings = parse_settings(make_config(models), tmp_path)
    gpu = Device("cuda0", "GPU-0", 0, "a GPU", 80 * 2**30, 80 * 2**30, 0)
    pools = pools_for(settings, (gpu,), 64 * 2**30)
    facts = {m: inspect_model(settings.models[m]) for m in models}
    need = {m: model_options(settings.models[m], facts[m], settings, pools, Vector())[0].need for m in models}
    projector = facts["seer"].projector
    assert projector is not None
    assert need["seer"]["cuda0"] - need["text"]["cuda0"] == projector.tensor_bytes
    assert need["seer"][HOST] - need["text"][HOST] == settings.models["seer"].model.image_cache
