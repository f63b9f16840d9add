"""What the dialects share: strict request models (OpenAI's own base) and validation errors that
name the field, with the dialect's prefix."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import invalid_request
from gateway.protocol.validation import Strict, load_json

__all__ = ["Strict", "load_json", "refuse", "validate"]

Model = TypeVar("Model", bound=BaseModel)
_UNION_LABELS = ("str", "list[", "dict[", "int", "float", "bool", "none", "literal[", "function-")


def _param(loc: tuple[int | str, ...]) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part[:1].isupper() or part.lower().startswith(_UNION_LABELS) or "[" in part:
            continue  # union branch labels pydantic adds to the location (a model name, "str", ...)
        else:
            parts.append(f".{part}" if parts else part)
    return "".join(parts)


def validate(cls: type[Model], data: dict[str, Any], prefix: str = "") -> Model:
    """A model from the request body (or the part of it at `prefix`), or a 400 naming the deepest
    bad field (`messages[0].content`)."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        param = ".".join(p for p in (prefix, _param(first["loc"])) if p).replace(".[", "[")
        reason = str(first["msg"]).replace("Input should be", "should be")
        if first["type"] == "missing":
            reason = "is required"
        message = f"Invalid value for '{param}': {reason}." if param else reason
        raise invalid_request(message, param=param or None) from None


def refuse(data: dict[str, Any], fields: dict[str, str]) -> None:
    """Fields the API defines that this gateway does not implement: a 400 naming each, never ignored."""
    for name, why in fields.items():
        value = data.get(name)
        if value is not None and value != [] and value != {}:
            raise invalid_request(f"'{name}' is not supported by this gateway: {why}", param=name)
