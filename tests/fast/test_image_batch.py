"""Images in the worker's continuous batch, over the fake llama.cpp (its projector makes 4 embedding
rows of any image; its KV pool checks positions and counts cells on its own): an image is one decode
of its own between the text rows, keyed on its digest for prefix reuse and the encode cache, shared by
n > 1 choices, recomputed after a pause, and a failing encoder ends only its own request."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gateway.engine.base import MEDIA_MARKER, Finished, GenerationParams
from gateway.engine.worker.backend import SamplerSettings
from gateway.engine.worker.batch import Batch
from gateway.engine.worker.media import (
    EncodeCache,
    ImageChunk,
    ImageFeeder,
    ImageSpan,
    check_images,
    placeholders,
    text_tokens,
)
from gateway.engine.worker.sequences import Request
from gateway.errors import GatewayError
from gateway.testing.fakellama import IMAGE_TOKENS, FakeLlama, FakeSampler, FakeScript
from tests.fast.test_batching import GREEDY, Recorder, run

SAMPLED = SamplerSettings(0.9, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0)


def image(name: str) -> dict[str, Any]:
    rgb = name.encode() * 12
    return {"digest": hashlib.sha256(rgb).hexdigest(), "width": 2, "height": 2, "rgb": rgb}


def make(
    slots: int = 2, n_ctx: int = 64, reply: int = 5, cache: int = 2**20, **script: Any
) -> tuple[FakeLlama, Batch, Recorder]:
    backend = FakeLlama(n_ctx=n_ctx, slots=slots, n_batch=16, script=FakeScript(reply_tokens=reply, **script))
    recorder = Recorder()
    feeder = ImageFeeder(backend, EncodeCache(cache))
    return backend, Batch(backend, slots, recorder, recorder, images=feeder), recorder


def chat(
    backend: FakeLlama, request_id: int, text: str, images: Sequence[dict[str, Any]] = (), **fields: Any
) -> Request:
    """`text` with a media marker where each image goes, rendered as the worker renders a chat."""
    params = GenerationParams(
        messages=[{"role": "user", "content": text}], max_tokens=None, temperature=0, top_p=1, top_k=0,
        min_p=0, repeat_penalty=1, presence_penalty=0, frequency_penalty=0, stop=[], seed=1, images=list(images),
    )  # fmt: skip
    rendered = backend.render(params)
    values: dict[str, Any] = {
        "request_id": request_id, "prompt": rendered.tokens, "n": 1, "limit": 20, "settings": GREEDY, "seed": None,
        "stops": [], "delta_interval": 0.0, "top_logprobs": None, "images": rendered.images,
    }  # fmt: skip
    values.update(fields)
    return Request(**values)


def feeder(batch: Batch) -> ImageFeeder:
    images = batch.images
    assert images is not None
    return images


def test_an_image_is_a_decode_of_its_own_and_its_tokens_count_in_the_prompt() -> None:
    backend, batch, rec = make()
    req = chat(backend, 1, f"look {MEDIA_MARKER} what is it", [image("red")])
    span = req.images[0]
    batch.submit(req)
    run(batch, backend)
    assert backend.image_decodes == [(0, span.start, IMAGE_TOKENS)]
    assert all(row.token >= 0 for rows in backend.decodes for row in rows)  # no placeholder reaches llama.cpp
    finished = rec.finished(1)
    assert finished is not None and finished.prompt_tokens == len(req.prompt) == 5 + IMAGE_TOKENS
    assert rec.text(1) == "tok0 tok1 tok2 tok3 tok4 "
    assert feeder(batch).cache.encodes == 1 == backend.encodes


def test_samplers_never_see_placeholders() -> None:
    backend, batch, _ = make()
    seen: list[int] = []
    make_sampler = backend.sampler

    def sampler(settings: SamplerSettings, seed: int) -> FakeSampler:
        made = make_sampler(settings, seed)
        made.accept_prompt = seen.extend  # type: ignore[method-assign]
        return made

    backend.sampler = sampler  # type: ignore[method-assign]
    req = chat(backend, 1, f"{MEDIA_MARKER} describe", [image("red")])
    batch.submit(req)
    run(batch, backend)
    assert seen and all(t >= 0 for t in seen) and len(seen) == len(req.prompt) - IMAGE_TOKENS


def test_text_streams_decode_every_step_while_an_image_request_prefills() -> None:
    backend, batch, rec = make(slots=3, n_ctx=96, reply=30)
    batch.submit(chat(backend, 1, "a running stream", limit=25))
    batch.step()
    stream_seq = batch.running[0].primary.seq
    before = len(backend.decodes)
    batch.submit(chat(backend, 2, f"one {MEDIA_MARKER} two {MEDIA_MARKER} three", [image("a"), image("b")]))
    for _ in range(6):
        batch.step()
    assert len(backend.image_decodes) == 2  # one image per step
    assert all(any(row.seq == stream_seq for row in rows) for rows in backend.decodes[before:])
    run(batch, backend)
    assert rec.text(1).count("tok") == 25 and not rec.errors()
    assert rec.text(2).count("tok") == 20


def test_prefix_reuse_keys_on_image_content() -> None:
    backend, batch, _ = make(slots=1, n_ctx=64)
    first = chat(backend, 1, f"look {MEDIA_MARKER} what is it", [image("red")])
    batch.submit(first)
    run(batch, backend)
    end = first.images[0].end
    batch.submit(chat(backend, 2, f"look {MEDIA_MARKER} what colour", [image("red")]))
    run(batch, backend)
    assert batch.reused_tokens >= end and len(backend.image_decodes) == 1  # its cells were reused
    batch.submit(chat(backend, 3, f"look {MEDIA_MARKER} what is it", [image("blue")]))
    run(batch, backend)
    assert len(backend.image_decodes) == 2 and backend.image_decodes[-1][1] == first.images[0].start
    assert feeder(batch).cache.encodes == 2


def test_the_encode_cache_spares_the_encoder_and_is_bounded_in_bytes() -> None:
    backend, batch, _ = make(slots=1, cache=2 * IMAGE_TOKENS * 8 * 4)  # room for two images
    for i, (prefix, name) in enumerate([("a", "red"), ("b", "red"), ("c", "blue"), ("d", "green"), ("e", "red")]):
        batch.submit(chat(backend, i, f"{prefix} {MEDIA_MARKER} go", [image(name)]))
        run(batch, backend)
    cache = feeder(batch).cache
    assert len(backend.image_decodes) == 5  # other prefixes: each decoded into its own cells
    assert (cache.encodes, cache.hits) == (4, 1)  # red again; red was dropped for blue and green
    assert cache.bytes <= cache.max_bytes and len(cache) == 2


def test_n_choices_share_one_image() -> None:
    backend, batch, rec = make(slots=1, n_ctx=96)
    batch.submit(chat(backend, 1, f"{MEDIA_MARKER} guess", [image("red")], n=3, settings=SAMPLED, limit=6, seed=1))
    run(batch, backend)
    assert len(backend.image_decodes) == 1 and backend.encodes == 1
    assert all(rec.text(1, i) for i in range(3))
    finished = rec.finished(1)
    assert finished is not None and finished.prompt_tokens == 2 + IMAGE_TOKENS


def test_a_failing_encoder_ends_its_own_request_and_no_other() -> None:
    backend, batch, rec = make(slots=2, n_ctx=96, reply=20, fail_encode=True)
    batch.submit(chat(backend, 1, "a text stream", limit=15))
    batch.step()
    batch.submit(chat(backend, 2, f"{MEDIA_MARKER} what", [image("red")]))
    run(batch, backend)
    errors = rec.errors()
    assert [r for r, _ in errors] == [2] and "image" in errors[0][1].message
    assert rec.text(1).count("tok") == 15 and rec.finished(1) == Finished("length", 3, 15)
    assert backend.used_cells() == batch.pool.ledger.used()


def test_a_paused_image_request_whose_cells_were_dropped_replays_its_image() -> None:
    backend, batch, rec = make(slots=2, n_ctx=24, reply=40)  # 48 cells
    req = chat(backend, 1, f"a {MEDIA_MARKER} b", [image("red")], limit=10, settings=SAMPLED, seed=1)
    batch.submit(req)
    for _ in range(4):
        batch.step()
    batch.pause(1)
    batch.submit(chat(backend, 2, " ".join(f"w{i}" for i in range(16)), limit=28))  # 44 cells: not beside its 10
    batch.step()
    assert batch.paused[1].dropped
    batch.resume(1)
    run(batch, backend)
    assert len(backend.image_decodes) == 2 and feeder(batch).cache.hits == 1  # replayed from the cache
    alone, alone_batch, alone_rec = make(slots=2, n_ctx=24, reply=40)
    alone_batch.submit(chat(alone, 1, f"a {MEDIA_MARKER} b", [image("red")], limit=10, settings=SAMPLED, seed=1))
    run(alone_batch, alone)
    assert rec.text(1) == alone_rec.text(1) and not rec.errors()


def test_what_the_batch_cannot_evaluate_is_refused_before_the_start() -> None:
    def span(start: int, n_tokens: int, non_causal: bool = False) -> ImageSpan:
        return ImageSpan(start, "ab" * 32, ImageChunk(n_tokens, non_causal, lambda: None))

    check_images([span(2, 4)], prompt_tokens=8, n_batch=16)  # text after it, causal: fine
    with pytest.raises(GatewayError) as last:
        check_images([span(4, 4)], prompt_tokens=8, n_batch=16)
    assert last.value.status == 400 and "cannot end with an image" in last.value.message
    with pytest.raises(GatewayError) as wide:
        check_images([span(1, 32, non_causal=True)], prompt_tokens=40, n_batch=16)
    assert wide.value.status == 501 and wide.value.code == "images_not_supported" and "n_batch" in wide.value.message


def test_placeholders_are_negative_and_key_on_the_digest() -> None:
    red, blue = image("red")["digest"], image("blue")["digest"]
    assert placeholders(red, 3) == placeholders(red, 3) and all(t < 0 for t in placeholders(red, 3))
    assert not set(placeholders(red, 64)) & set(placeholders(blue, 64))
    assert text_tokens([5, *placeholders(red, 2), 7]) == [5, 7]


def test_a_background_encode_holds_up_only_its_own_request() -> None:
    backend = FakeLlama(n_ctx=96, slots=2, n_batch=16, script=FakeScript(reply_tokens=30))
    rec = Recorder()
    images = ImageFeeder(backend, EncodeCache(2**20), background=True)
    batch = Batch(backend, 2, rec, rec, images=images)
    batch.submit(chat(backend, 1, "a running stream", limit=25))
    batch.step()
    gate = threading.Event()

    def slow_encoder() -> Any:
        gate.wait(30)
        return np.full((IMAGE_TOKENS, 8), 1.0, dtype=np.float32)

    req = chat(backend, 2, f"{MEDIA_MARKER} what", [image("red")])
    span = req.images[0]
    batch.submit(
        replace(req, images=(ImageSpan(span.start, span.digest, ImageChunk(IMAGE_TOKENS, False, slow_encoder)),))
    )
    for _ in range(10):
        batch.step()
    assert rec.text(1).count("tok") >= 10 and not backend.image_decodes  # the stream went on; the image waits
    gate.set()
    run(batch, backend)
    assert len(backend.image_decodes) == 1 and rec.text(2) and not rec.errors()
    assert (images.cache.encodes, images.cache.hits) == (1, 0)
