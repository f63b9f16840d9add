"""An image part's bytes → checked RGB pixels: limits first (the header says the size before any
pixel is decoded), then Pillow decodes the first frame. Anything else is a 400 naming the part."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass, field

from gateway.errors import GatewayError, invalid_request
from gateway.images import limits


@dataclass(frozen=True)
class Image:
    """One decoded image: what the projector reads, and the digest prefix reuse keys on."""

    width: int
    height: int
    rgb: bytes = field(repr=False)  # width x height x 3, rows top to bottom
    source_format: str  # PNG, JPEG, WEBP or GIF
    digest: str  # sha256 of the pixels: the same picture in another file is the same image


def _bad(where: str, why: str) -> GatewayError:
    return invalid_request(f"Invalid image at '{where}': {why}", param=where, code="invalid_image")


def decode_image(data: bytes, where: str) -> Image:
    if len(data) > limits.MAX_IMAGE_BYTES:
        raise _bad(where, f"{len(data)} bytes; an image may have at most {limits.MAX_IMAGE_BYTES}.")
    from PIL import Image as Pillow
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Pillow.DecompressionBombWarning)
            with Pillow.open(io.BytesIO(data), formats=limits.FORMATS) as picture:
                width, height = picture.size
                if max(width, height) > limits.MAX_IMAGE_SIDE or width * height > limits.MAX_IMAGE_PIXELS:
                    raise _bad(
                        where,
                        f"{width}x{height} pixels; at most {limits.MAX_IMAGE_SIDE} a side and "
                        f"{limits.MAX_IMAGE_PIXELS} in all.",
                    )
                if width < 1 or height < 1:
                    raise _bad(where, "the image has no pixels.")
                source_format = str(picture.format)
                picture.seek(0)  # an animated GIF: its first frame
                rgb = picture.convert("RGB").tobytes()
    except UnidentifiedImageError:
        raise _bad(where, "not a PNG, JPEG, WebP or GIF image.") from None
    except GatewayError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Pillow.DecompressionBombError, Warning) as exc:
        raise _bad(where, f"the image cannot be decoded ({type(exc).__name__}: {str(exc)[:120]}).") from None
    return Image(width, height, rgb, source_format, hashlib.sha256(rgb).hexdigest())


def decode_base64(payload: str, where: str) -> bytes:
    """Base64 as the APIs send it (line breaks tolerated), bounded before it is decoded."""
    text = "".join(payload.split())
    if len(text) * 3 // 4 > limits.MAX_IMAGE_BYTES + 2:
        raise _bad(where, f"more than {limits.MAX_IMAGE_BYTES} bytes once decoded.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, "the data is not valid base64.") from None


def check_media_type(media_type: str, where: str) -> None:
    if media_type.lower() not in limits.MEDIA_TYPES:
        raise _bad(where, f"'{media_type[:64]}' is not an image type this gateway reads (PNG, JPEG, WebP, GIF).")


def decode_data_url(url: str, where: str) -> Image:
    """`data:image/png;base64,...`: the only inline form the APIs use."""
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().startswith("data:"):
        raise _bad(where, "a data URL is data:<image type>;base64,<data>.")
    params = header[5:].split(";")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise _bad(where, "only base64 data URLs are read (data:<image type>;base64,<data>).")
    if params[0]:
        check_media_type(params[0].strip(), where)
    return decode_image(decode_base64(payload, where), where)
