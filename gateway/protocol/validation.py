"""How OpenAI request bodies are validated: strict models, and a 400 that names the bad param."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.errors import invalid_request
from gateway.protocol.jsonbody import parse_object

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    # strict: "5" is not an integer and 1 is not a boolean, as in OpenAI's API (and Anthropic's).
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _param_name(loc: tuple[int | str, ...], data: Any, missing: bool) -> str:
    """The dotted path of the bad field in the body. pydantic's location mixes the body's keys and
    indexes with labels of union branches (`str`, `list[TextPart]`, a tag such as `text`); walking the
    body itself tells them apart: a label is not a key of the object it would name. The last part of
    a missing field is a key the object lacks."""
    name, node = "", data
    for i, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            name, node = f"{name}[{part}]", node[part]
        elif isinstance(part, str) and isinstance(node, dict) and (part in node or (missing and i == len(loc) - 1)):
            name, node = f"{name}.{part}" if name else part, node.get(part)
    return name


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "literal_error" and error["loc"][-1] == "role":
        roles = str(error.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{str(error['input'])[:40]!r} is not a supported role ({roles})"
    return str(error["msg"]).replace("Input should be", "should be")


def validate(cls: type[Model], data: dict[str, Any], prefix: str = "") -> Model:
    """A model from the request body (or the part of it at `prefix`), or a 400 naming the bad field
    (`messages[0].content`): every endpoint and dialect reports validation errors this one way."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        # A violated limit or value says more than "should be a string" from another branch of a union;
        # then the deepest error (content: str | parts) is the one that explains the problem.
        first = max(exc.errors(), key=lambda e: (not e["type"].endswith("_type"), len(e["loc"])))
        param = _param_name(first["loc"], data, first["type"] == "missing")
        if first["type"] == "union_tag_invalid":  # a content part of an unknown type: name its `type`
            param = f"{param}.{str(first.get('ctx', {}).get('discriminator', 'type')).strip(chr(39))}"
        param = ".".join(p for p in (prefix, param) if p).replace(".[", "[")
        message = f"Invalid value for '{param}': {_describe(dict(first))}." if param else str(first["msg"])
        raise invalid_request(message, param=param or None) from None


def load_json(body: bytes) -> dict[str, Any]:
    """Strict JSON, bounded nesting, valid Unicode, 64-bit integers: as every endpoint (jsonbody.py)."""
    return parse_object(body)


def refuse(data: dict[str, Any], unsupported: tuple[str, ...]) -> None:
    """Fields OpenAI defines that this gateway does not implement: a 400 naming them, never ignored."""
    for name in unsupported:
        if data.get(name) is not None:
            raise invalid_request(f"'{name}' is not supported by this gateway yet.", param=name)
    if data.get("stream_options") is not None and not data.get("stream"):
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
