"""An image part's URL, as every dialect hands it over: a data URL is decoded and checked at once
(before the 200); an http(s) URL is kept for the fetch policy (remote.py); anything else is a 400."""

from __future__ import annotations

from gateway.errors import invalid_request
from gateway.images import limits
from gateway.images.decode import Image, decode_data_url
from gateway.images.remote import host_of


def check_source(url: str, where: str) -> Image | None:
    """The decoded image of a data URL; None for a remote URL (fetched only where allowed)."""
    if url[:5].lower() == "data:":
        return decode_data_url(url, where)
    host_of(url, where)  # http(s) with a host, or a 400
    return None


def check_count(count: int, where: str) -> None:
    """`count`: the images so far in the request, this one included."""
    if count > limits.MAX_IMAGES_PER_REQUEST:
        raise invalid_request(
            f"Too many images: '{where}' is image {count}; a request may carry at most "
            f"{limits.MAX_IMAGES_PER_REQUEST} across all of its messages.",
            param=where,
            code="too_many_images",
        )


def data_url(media_type: str, base64_data: str) -> str:
    """Anthropic's base64 source as the data URL the chat form carries."""
    return f"data:{media_type};base64,{base64_data}"
