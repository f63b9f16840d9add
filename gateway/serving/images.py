"""What a chat's images ask of the model, decided before anything runs: a model without a vision
projector refuses them, and a remote URL must be one the operator allows."""

from __future__ import annotations

from gateway.config import GatewaySection
from gateway.errors import GatewayError, invalid_request
from gateway.images.remote import check_allowed
from gateway.protocol import ChatCompletionRequest
from gateway.protocol.imageparts import image_parts
from gateway.scheduler import SlotView


def plan_images(chat: ChatCompletionRequest, view: SlotView, gateway: GatewaySection) -> int:
    """The number of images the chat carries (each already checked where it was parsed)."""
    parts = image_parts(chat.messages)
    if not parts:
        return 0
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
    # The worker does not evaluate images yet: refused rather than answered as if it had seen none.
    raise GatewayError(
        501,
        f"Model '{view.model_id}' has a vision projector, but this gateway does not run images through "
        "it yet (the images were checked and are valid).",
        param=parts[0][0],
        code="images_not_served",
    )
