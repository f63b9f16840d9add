"""A vision projector (`mmproj`) GGUF as libmtmd reads it: is it one, and does its output fit the
text model? Checked from the headers, before any worker loads either file."""

from __future__ import annotations

from gateway.gguf.info import GGUFInfo


def projection_width(projector: GGUFInfo) -> int | None:
    """The width of the embeddings the projector hands the text model, where its header says it."""
    value = projector.metadata.get("clip.vision.projection_dim")
    return int(value) if isinstance(value, int) else None


def projector_problem(model: GGUFInfo, projector: GGUFInfo) -> str | None:
    """Why `projector` cannot serve `model`'s images, or None when it can."""
    if projector.architecture != "clip":
        return f"not a projector: general.architecture is '{projector.architecture}', not 'clip'"
    if not projector.metadata.get("clip.has_vision_encoder"):
        return "the projector has no vision encoder (clip.has_vision_encoder is not true)"
    width = projection_width(projector)
    if width is not None and width != model.embedding_length:
        return (
            f"the projector's output width {width} is not the model's embedding width "
            f"{model.embedding_length}: it was made for another model"
        )
    return None
