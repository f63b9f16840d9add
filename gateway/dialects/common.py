"""What the dialects share with the OpenAI endpoints (strict models, one validator that names the
bad field) and their own refusal of fields they do not implement."""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid_request
from gateway.protocol.validation import Strict, load_json, validate

__all__ = ["Strict", "load_json", "refuse", "validate"]


def refuse(data: dict[str, Any], fields: dict[str, str]) -> None:
    """Fields the API defines that this gateway does not implement: a 400 naming each, never ignored."""
    for name, why in fields.items():
        value = data.get(name)
        if value is not None and value != [] and value != {}:
            raise invalid_request(f"'{name}' is not supported by this gateway: {why}", param=name)
