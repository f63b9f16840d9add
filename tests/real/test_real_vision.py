"""A real gateway over SmolLM2 with scripts/tiny-projector's projector: the worker loads it with
libmtmd beside the model, the card says `vision`, and image parts reach the checks in every SDK."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import anthropic
import pytest
from openai import BadRequestError, OpenAI
from PIL import Image as Pillow

from tests.ggufgen import write_tiny_projector
from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("vision")
    projector = write_tiny_projector(folder / "mmproj.gguf", 576)  # SmolLM2-135M's embedding width
    # Its header passes the gateway's checks; only libmtmd, in the worker, can tell it is no projector it knows.
    unknown = write_tiny_projector(folder / "unknown.gguf", 576, projector_type="no-such-type")
    config = {
        "gateway": {"memory_budget": "2GiB", "spare_workers": 0, "failure_cooldown": 0},
        "models": {
            "seer": model(SMOLLM, model={"mmproj": str(projector)}),
            "text": model(SMOLLM),
            "unknown": model(SMOLLM, model={"mmproj": str(unknown)}),
        },
    }
    gateway = GatewayServer(config, folder)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def png() -> str:
    out = io.BytesIO()
    Pillow.new("RGB", (32, 32), (220, 30, 30)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_the_worker_loads_the_projector_and_text_still_answers(client: OpenAI) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert "vision" in cards["seer"]["capabilities"] and "vision" not in cards["text"]["capabilities"]
    answer = client.chat.completions.create(
        model="seer", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0
    )
    assert answer.usage is not None and answer.usage.completion_tokens > 0  # loaded with its projector


def test_image_parts_through_the_sdks(client: OpenAI, server: GatewayServer) -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png()}"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What colour?"}, part]}]
    with pytest.raises(BadRequestError) as refused:
        client.chat.completions.create(model="text", messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert refused.value.code == "model_cannot_read_images"
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png()[:-40]}}
    with pytest.raises(anthropic.BadRequestError) as corrupt:
        sdk.messages.create(
            model="seer",
            max_tokens=4,
            messages=[{"role": "user", "content": [block]}],  # type: ignore[list-item]
        )
    assert "messages[0].content[0]" in str(corrupt.value)


def test_a_projector_libmtmd_refuses_fails_the_load_naming_it(client: OpenAI) -> None:
    from openai import APIStatusError

    with pytest.raises(APIStatusError) as failed:
        client.chat.completions.create(model="unknown", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert failed.value.status_code == 503
    assert "unknown.gguf" in str(failed.value)
