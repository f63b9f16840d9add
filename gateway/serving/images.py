"""A chat's images: what they ask of the model, decided with the plan (a model without a vision
projector refuses them, a remote URL must be one the operator allows), and their pixels, made just
before the model is held (data URLs decoded, remote ones fetched, all off the event loop) for the
worker, whose projector reads them where the messages' media markers are."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config import GatewaySection, ImageFetch
from gateway.errors import invalid_request
from gateway.images import limits
from gateway.images.decode import Image, decode_data_url
from gateway.images.remote import check_allowed, fetch_image
from gateway.protocol import ChatCompletionRequest
from gateway.protocol.imageparts import image_parts
from gateway.scheduler import SlotView

ImageSource = tuple[str, str]  # where the part is (messages[0].content[1]), its URL


def plan_images(chat: ChatCompletionRequest, view: SlotView, gateway: GatewaySection) -> tuple[ImageSource, ...]:
    """The chat's images in order (each already checked where it was parsed)."""
    parts = image_parts(chat.messages)
    if not parts:
        return ()
    if view.entry.model.mmproj is None:
        raise invalid_request(
            f"Model '{view.model_id}' cannot read images: it has no vision projector (model.mmproj). "
            "Send the text alone, or choose a model whose /v1/models capabilities list 'vision'.",
            param=parts[0][0],
            code="model_cannot_read_images",
        )
    for where, part in parts:
        if part.image_url.url[:5].lower() != "data:":
            check_allowed(part.image_url.url, gateway.image_fetch, where)
    return tuple((where, part.image_url.url) for where, part in parts)


async def load_images(sources: tuple[ImageSource, ...], policy: ImageFetch | None) -> list[dict[str, Any]]:
    """Each image's pixels as the worker takes them (engine.base.GenerationParams.images), together."""
    return list(await asyncio.gather(*(_load(url, where, policy) for where, url in sources)))


async def _load(url: str, where: str, policy: ImageFetch | None) -> dict[str, Any]:
    if url[:5].lower() == "data:":
        image = await asyncio.to_thread(decode_data_url, url, where)
    else:
        image = await fetch_image(url, policy, where)
    return await asyncio.to_thread(for_projector, image)


def for_projector(image: Image) -> dict[str, Any]:
    """The image as plain values, scaled down to `limits.MAX_PROJECTOR_SIDE` on its longer side
    first: no projector libmtmd runs reads more, and the worker need not be sent more."""
    width, height, rgb = image.width, image.height, image.rgb
    longest = max(width, height)
    if longest > limits.MAX_PROJECTOR_SIDE:
        from PIL import Image as Pillow

        scale = limits.MAX_PROJECTOR_SIDE / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = Pillow.frombytes("RGB", (width, height), rgb).resize(size, Pillow.Resampling.BICUBIC)
        (width, height), rgb = picture.size, picture.tobytes()
    return {"digest": image.digest, "width": width, "height": height, "rgb": rgb}
