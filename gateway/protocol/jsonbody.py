"""A request body as JSON, with the checks every endpoint needs before its own validation:
strict JSON numbers, bounded nesting, 64-bit integers, and valid Unicode. Pure: no I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from gateway.errors import invalid_request
from gateway.protocol.limits import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH

Path = tuple[str | int, ...]


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong and where."""
    try:
        data = json.loads(body, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError:
        raise invalid_request(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.")
    problem = _first_problem(data)
    if problem is not None:
        path, reason = problem
        param = param_name(path)
        raise invalid_request(f"Invalid value for '{param}': {reason}." if param else f"{reason}.", param or None)
    return data


def param_name(path: Path) -> str:
    """messages[0].content; keys that are not plain names are shown escaped."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            text = part if part.isascii() and part.isprintable() else ascii(part)[1:-1]
            name += f".{text}" if name else text
    return name


def _valid_text(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone UTF-16 surrogate ("\ud800"): no character at all
    return True


def _children(value: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(value, dict):
        return iter(value.items())
    return enumerate(value)


def _first_problem(data: dict[str, Any]) -> tuple[Path, str] | None:
    """Depth-first, iteratively (a deep body must not exhaust the stack here either)."""
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            return path[:1], f"nested more than {MAX_JSON_DEPTH} levels deep (the limit for a request body)"
        for key, child in _children(value):
            if isinstance(key, str) and not _valid_text(key):
                return path, "a key contains a lone UTF-16 surrogate, which is not valid Unicode"
            if isinstance(child, str):
                if not _valid_text(child):
                    return (
                        *path,
                        key,
                    ), "contains a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode"
            elif isinstance(child, bool):
                continue
            elif isinstance(child, int):
                if not INT64_MIN <= child <= INT64_MAX:
                    return (*path, key), "integers must fit in 64 bits"
            elif isinstance(child, (dict, list)):
                stack.append(((*path, key), child))
    return None
