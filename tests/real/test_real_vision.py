"""A real gateway over SmolLM2 with scripts/tiny-projector's projector: the worker loads it with
libmtmd beside the model, the card says `vision`, image parts reach the checks in every SDK, and
images are encoded and evaluated in the continuous batch: their tokens count, they change the
answer (the same image, the same answer), a second request with the same image skips the encoder,
and an image request decodes beside running text streams."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
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
            "seer": model(SMOLLM, model={"mmproj": str(projector)}, runtime={"parallel": 2}),
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


RED, BLUE = (220, 30, 30), (30, 30, 220)  # the tiny projector's first greedy tokens differ for these two
IMAGE_TOKENS = 16  # image_size 32 / patch_size 8, squared


def png(colour: tuple[int, int, int] = RED) -> str:
    out = io.BytesIO()
    Pillow.new("RGB", (32, 32), colour).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def image_part(colour: tuple[int, int, int] = RED) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png(colour)}"}}


def ask(client: OpenAI, colour: tuple[int, int, int] | None, system: str | None = None, **extra: Any) -> Any:
    content: list[dict[str, Any]] = [{"type": "text", "text": "What colour?"}]
    if colour is not None:
        content.append(image_part(colour))
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return client.chat.completions.create(
        model="seer",
        messages=messages,
        max_tokens=8,
        temperature=0,
        **extra,  # type: ignore[arg-type]
    )


def counter(server: GatewayServer, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=CLIENT_TIMEOUT).text
    match = re.search(rf'^{name}{{model="seer"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


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


def test_an_images_tokens_count_and_it_changes_the_answer(client: OpenAI) -> None:
    # Seeded: each evaluates its whole prompt, so no answer depends on which cells another left behind.
    plain, red, blue = ask(client, None, seed=1), ask(client, RED, seed=1), ask(client, BLUE, seed=1)
    red_again = ask(client, RED, seed=1)
    assert red.usage.prompt_tokens == plain.usage.prompt_tokens + IMAGE_TOKENS
    assert red.choices[0].message.content != blue.choices[0].message.content
    assert red.choices[0].message.content == red_again.choices[0].message.content


def test_a_second_request_with_the_same_image_skips_the_encoder(client: OpenAI, server: GatewayServer) -> None:
    colour = (10, 200, 90)
    ask(client, colour)
    encodes, hits = counter(server, "gateway_image_encodes_total"), counter(server, "gateway_image_cache_hits_total")
    assert encodes >= 1
    ask(client, colour)  # the same prompt: its cells are reused, nothing to encode or decode
    assert counter(server, "gateway_image_encodes_total") == encodes
    ask(client, colour, system="You describe pictures.")  # another prefix: new cells, the kept encoding
    assert counter(server, "gateway_image_encodes_total") == encodes
    assert counter(server, "gateway_image_cache_hits_total") == hits + 1
    ask(client, (200, 200, 10))
    assert counter(server, "gateway_image_encodes_total") == encodes + 1


def test_an_image_request_decodes_beside_a_running_text_stream(client: OpenAI) -> None:
    seen: list[str] = []
    finished: list[Any] = []

    def stream_text() -> None:
        stream = client.chat.completions.create(
            model="seer",
            messages=[{"role": "user", "content": "Count from 1 to 100, separated by commas."}],
            max_tokens=80, temperature=0, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finished.append(chunk.choices[0].finish_reason)
            if chunk.usage is not None:
                finished.append(chunk.usage.completion_tokens)

    thread = threading.Thread(target=stream_text)
    thread.start()
    while not seen and thread.is_alive():
        threading.Event().wait(0.01)
    answer = ask(client, BLUE)
    during = len(seen)
    thread.join(timeout=CLIENT_TIMEOUT)
    assert answer.usage.completion_tokens > 0 and answer.choices[0].message.content
    assert during < 80 and finished == ["length", 80]  # it was running, and it was not cut


def test_images_through_the_sdks_streamed_and_not(client: OpenAI, server: GatewayServer) -> None:
    answer = ask(client, BLUE, seed=1)
    expected, prompt_tokens = answer.choices[0].message.content, answer.usage.prompt_tokens
    chunks = ask(client, BLUE, stream=True, seed=1)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    # Messages and Responses have no seed: an answer may start from cells an earlier request left, so
    # only its presence and the prompt's size (the image's tokens included) are compared.
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png(BLUE)}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "What colour?"}, block]}]
    message = sdk.messages.create(model="seer", max_tokens=8, messages=messages)
    assert message.content[0].text and message.usage.input_tokens == prompt_tokens  # type: ignore[union-attr]
    with sdk.messages.stream(model="seer", max_tokens=8, messages=messages) as stream:
        assert "".join(stream.text_stream)
        assert stream.get_final_message().usage.input_tokens == prompt_tokens
    part = {"type": "input_image", "image_url": f"data:image/png;base64,{png(BLUE)}"}
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "What colour?"}, part]}]
    response = client.responses.create(model="seer", input=items, max_output_tokens=8)
    assert response.output_text and response.usage is not None and response.usage.input_tokens == prompt_tokens
