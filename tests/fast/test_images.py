"""Image parts in every dialect: one internal form, limits and corrupt images as 400s naming the
part, a text-only model refusing images, and remote URLs fetched only where the operator allows."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image as Pillow
from starlette.testclient import TestClient

from gateway.config import ImageFetch, parse_settings
from gateway.errors import GatewayError
from gateway.images import limits
from gateway.images.decode import decode_data_url, decode_image
from gateway.images.remote import check_allowed, fetch_image, internal
from gateway.testing.fakellama import IMAGE_TOKENS
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.ggufgen import write_tiny_projector


def picture(fmt: str, size: tuple[int, int] = (4, 3), color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    image = Pillow.new("RGB", size, color)
    if fmt == "GIF":  # two frames: the first is the one read
        image.save(out, "GIF", save_all=True, append_images=[Pillow.new("RGB", size, (0, 0, 255))])
    else:
        image.save(out, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return out.getvalue()


def cut_short() -> bytes:
    """A PNG whose header reads but whose pixels stop midway."""
    noise = Pillow.frombytes("RGB", (32, 32), bytes((i * 7919) % 251 for i in range(32 * 32 * 3)))
    out = io.BytesIO()
    noise.save(out, "PNG")
    return out.getvalue()[:-200]


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def refused(call: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)
    return caught.value


# -- decoding and limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_each_format_decodes_to_rgb(fmt: str, media_type: str) -> None:
    image = decode_data_url(data_url(picture(fmt), f"image/{media_type}"), "p")
    assert (image.width, image.height, image.source_format) == (4, 3, fmt)
    assert len(image.rgb) == 4 * 3 * 3
    red, _, blue = image.rgb[:3]
    assert red > 150 and blue < 60  # a GIF's first frame (red), not its second (blue)


def test_the_same_pixels_in_another_file_are_the_same_image() -> None:
    png, webp = decode_image(picture("PNG"), "a"), decode_image(picture("WEBP"), "b")
    assert png.digest == webp.digest
    assert decode_image(picture("PNG", color=(1, 2, 3)), "c").digest != png.digest


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (cut_short(), "cannot be decoded"),
        (b"hello, not an image at all", "not a PNG, JPEG, WebP or GIF"),
        (picture("BMP"), "not a PNG, JPEG, WebP or GIF"),  # a format the APIs do not name
    ],
    ids=["cut-short", "text", "bmp"],
)
def test_corrupt_or_unsupported_images_are_400s_naming_the_part(data: bytes, says: str) -> None:
    error = refused(decode_image, data, "messages[0].content[1]")
    assert error.status == 400 and error.param == "messages[0].content[1]" and error.code == "invalid_image"
    assert says in error.message


def test_limits_on_bytes_and_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    big = picture("PNG", size=(300, 200))
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    assert "300x200 pixels" in refused(decode_image, big, "p").message
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(limits, "MAX_IMAGE_SIDE", 299)
    assert "at most 299 a side" in refused(decode_image, big, "p").message
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", len(big) - 1)
    assert f"{len(big)} bytes" in refused(decode_image, big, "p").message
    assert "once decoded" in refused(decode_data_url, data_url(big * 2), "p").message  # before decoding base64


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:image/png,rawbytes", "only base64 data URLs"),
        ("data:text/plain;base64,aGVsbG8=", "'text/plain' is not an image type"),
        ("data:image/png;base64", "data:<image type>;base64,<data>"),
    ],
)
def test_bad_data_urls(url: str, says: str) -> None:
    assert says in refused(decode_data_url, url, "p").message


# -- remote URLs --------------------------------------------------------------------------------------


def test_remote_urls_need_the_operator_and_a_matching_host() -> None:
    error = refused(check_allowed, "https://example.com/cat.png", None, "messages[0].content[0]")
    assert error.code == "image_url_not_allowed" and "gateway.image_fetch" in error.message
    policy = ImageFetch(allow=["*.example.com"])
    assert check_allowed("https://img.example.com/cat.png", policy, "p") == "img.example.com"
    assert "not in gateway.image_fetch.allow" in refused(check_allowed, "https://evil.test/x.png", policy, "p").message
    assert refused(check_allowed, "file:///etc/passwd", policy, "p").code == "invalid_image"


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        *[(a, True) for a in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:192.168.0.1")],
        *[(a, False) for a in ("93.184.216.34", "2606:2800:220:1::1")],
    ],
)
def test_internal_addresses(address: str, inside: bool) -> None:
    assert internal(address) is inside


@pytest.fixture
def image_server() -> Iterator[str]:
    body = picture("PNG", size=(5, 5))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/big.png":
                payload = body * 100
            elif self.path == "/cat.png":
                payload = body
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fetch(url: str, policy: ImageFetch) -> Any:
    return anyio.run(fetch_image, url, policy, "messages[0].content[0]")


def test_loopback_is_fetched_only_when_named(image_server: str) -> None:
    error = refused(_fetch, f"{image_server}/cat.png", ImageFetch(allow=["*"]))
    assert "private or loopback" in error.message and error.param == "messages[0].content[0]"
    image = _fetch(f"{image_server}/cat.png", ImageFetch(allow=["127.0.0.1"]))
    assert (image.width, image.height) == (5, 5)


def test_fetches_are_bounded_and_must_succeed(image_server: str) -> None:
    policy = ImageFetch(allow=["127.0.0.1"], max_bytes=1000)
    assert "larger than gateway.image_fetch.max_bytes" in refused(_fetch, f"{image_server}/big.png", policy).message
    assert "HTTP 404" in refused(_fetch, f"{image_server}/nothing.png", policy).message


# -- through each API ------------------------------------------------------------------------------


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    write_tiny_projector(tmp_path / "p.gguf", 64)
    doc = make_config({"text": {}, "seer": {"model": {"mmproj": "p.gguf"}}}, {"max_body_bytes": "32MiB"})
    app = create_app(parse_settings(doc, tmp_path), spawn=FakeWorkers({}).spawn, budget=2**40)
    with TestClient(app) as c:
        yield c


PNG = data_url(picture("PNG"))
CORRUPT = data_url(cut_short())


def openai(client: TestClient, model: str, *parts: dict[str, Any], role: str = "user") -> Any:
    content = [{"type": "text", "text": "What is this?"}, *parts]
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": role, "content": content}]})


def image_url(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_openai_a_text_only_model_cannot_read_images(client: TestClient) -> None:
    error = error_of(openai(client, "text", image_url(PNG, detail="low")))
    assert error["code"] == "model_cannot_read_images" and error["param"] == "messages[0].content[1]"
    assert "cannot read images" in error["message"]


def test_openai_bad_images_name_their_part(client: TestClient) -> None:
    assert error_of(openai(client, "seer", image_url(CORRUPT)))["param"] == "messages[0].content[1]"
    remote = error_of(openai(client, "seer", image_url(PNG), image_url("https://example.com/a.png")))
    assert remote["param"] == "messages[0].content[2]" and remote["code"] == "image_url_not_allowed"
    assert error_of(openai(client, "seer", image_url(PNG), role="system"))["param"] == "messages[0].content[1]"
    many = error_of(openai(client, "seer", *[image_url(PNG)] * (limits.MAX_IMAGES_PER_REQUEST + 1)))
    assert (
        many["code"] == "too_many_images"
        and many["param"] == f"messages[0].content[{limits.MAX_IMAGES_PER_REQUEST + 1}]"
    )


def test_an_image_in_an_earlier_turn_counts(client: TestClient) -> None:
    messages = [
        {"role": "user", "content": [image_url(CORRUPT)]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And its colour?"},
    ]
    response = client.post("/v1/chat/completions", json={"model": "seer", "messages": messages})
    assert error_of(response)["param"] == "messages[0].content[0]"
    messages[0] = {"role": "user", "content": [image_url(PNG)]}
    response = client.post("/v1/chat/completions", json={"model": "text", "messages": messages})
    assert error_of(response)["code"] == "model_cannot_read_images"


def test_a_vision_models_valid_image_is_answered_and_its_tokens_count(client: TestClient) -> None:
    text = client.post(
        "/v1/chat/completions", json={"model": "seer", "messages": [{"role": "user", "content": "What is this?"}]}
    )
    answer = openai(client, "seer", image_url(PNG))
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == text.json()["usage"]["prompt_tokens"] + 1 + IMAGE_TOKENS


def test_images_past_the_context_are_a_400_before_the_answer(client: TestClient) -> None:
    error = error_of(openai(client, "seer", *[image_url(PNG)] * 16))  # 16 x 4 image tokens, n_ctx 64
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


def anthropic(client: TestClient, model: str, block: dict[str, Any]) -> Any:
    content = [{"type": "text", "text": "What is this?"}, block]
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    return client.post("/v1/messages", json=body)


def base64_block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": "image", "source": source}


def test_anthropic_image_blocks(client: TestClient) -> None:
    error = error_of(anthropic(client, "text", base64_block(picture("JPEG"), "image/jpeg")))
    assert error["type"] == "invalid_request_error" and "cannot read images" in error["message"]
    assert anthropic(client, "seer", base64_block(picture("PNG"))).status_code == 200
    corrupt = error_of(anthropic(client, "seer", base64_block(cut_short())))
    assert "messages[0].content[1]" in corrupt["message"]
    bmp = error_of(anthropic(client, "seer", base64_block(picture("PNG"), "image/bmp")))
    assert "'image/bmp' is not an image type" in bmp["message"]
    remote = error_of(anthropic(client, "seer", {"type": "image", "source": {"type": "url", "url": "https://a.b/c"}}))
    assert "gateway.image_fetch" in remote["message"]


def responses(client: TestClient, model: str, part: dict[str, Any]) -> Any:
    content = [{"type": "input_text", "text": "What is this?"}, part]
    return client.post("/v1/responses", json={"model": model, "input": [{"role": "user", "content": content}]})


def test_responses_input_images(client: TestClient) -> None:
    image = {"type": "input_image", "image_url": PNG, "detail": "auto"}
    assert error_of(responses(client, "text", image))["code"] == "model_cannot_read_images"
    assert responses(client, "seer", image).json()["status"] == "completed"
    file_id = error_of(responses(client, "seer", {"type": "input_image", "file_id": "file-1"}))
    assert file_id["param"] == "input[0].content[1].file_id" and "Files API" in file_id["message"]
    corrupt = error_of(responses(client, "seer", {"type": "input_image", "image_url": CORRUPT}))
    assert corrupt["param"] == "input[0].content[1]" and corrupt["code"] == "invalid_image"
