"""JSON schemas for structured outputs: what the constraint engine (llguidance) can enforce.

Runs in the gateway process, without llama.cpp, so a schema the engine cannot enforce is a 400
naming the field and the keyword before the 200; the worker compiles the same grammar text
(`grammar`) against the model's vocabulary. Nothing is silently dropped: llguidance refuses keywords
it does not implement (`lenient` stays off), and this module adds OpenAI's `strict` rules.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.errors import invalid_request

# Compact JSON, as OpenAI sends it: no stray whitespace around or inside the answer, and no chance
# for a small model to loop on blank lines. Raw control characters are never valid in JSON strings.
COMPILE_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "lenient": False}

ANY_OBJECT: dict[str, Any] = {"type": "object"}

# Where schemas nest other schemas (Draft 2020-12 plus the older `definitions`).
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "contains", "if", "then", "else")


# A time's fractional seconds may have any number of digits, and a small model sampling at
# temperature 1 can write them until max_tokens: without a maxLength of their own, times are capped
# (still valid times; the longest with microseconds and an offset is 32 characters).
TIME_MAX_LENGTH = {"time": 24, "date-time": 35}
_VALUES = ("const", "enum", "default", "examples")  # JSON values, not schemas


def grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar text for a JSON schema (validated separately: see `check`)."""
    from llguidance import LLMatcher

    bounded = copy.deepcopy(schema)
    _bound_times(bounded)
    return LLMatcher.grammar_from_json_schema(bounded, overrides=COMPILE_OPTIONS)  # type: ignore[arg-type]


def _bound_times(node: Any) -> None:
    if isinstance(node, dict):
        kind = node.get("format")
        limit = TIME_MAX_LENGTH.get(kind) if isinstance(kind, str) else None
        if limit is not None and "maxLength" not in node:
            node["maxLength"] = limit
        for key, child in node.items():
            if key not in _VALUES:
                _bound_times(child)
    elif isinstance(node, list):
        for child in node:
            _bound_times(child)


def check(schema: Any, param: str) -> None:
    """A 400 naming `param` and the offending keyword when the engine cannot enforce `schema`."""
    from llguidance import LLMatcher

    if not isinstance(schema, dict):
        raise invalid_request(f"'{param}' must be a JSON schema object.", param=param)
    try:
        failed, messages = LLMatcher.validate_grammar_with_warnings(grammar(schema))
    except (ValueError, TypeError) as exc:
        failed, messages = True, [str(exc)]
    if failed:
        reason = messages[0] if messages else "invalid schema"
        raise invalid_request(f"'{param}' cannot be enforced: {reason}", param=param)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's strict mode: every object lists all its properties as required and allows no others."""
    result = copy.deepcopy(schema)
    _make_strict(result)
    return result


def _make_strict(node: Any) -> None:
    if not isinstance(node, dict):
        return
    if "properties" in node or node.get("type") == "object":
        node["required"] = list(node.get("properties", {}))
        node["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        for child in (node.get(key) or {}).values():
            _make_strict(child)
    for key in _SCHEMA_LISTS:
        for child in node.get(key) or []:
            _make_strict(child)
    for key in _SCHEMA_VALUES:
        _make_strict(node.get(key))


def enforce(schema: Any, param: str, is_strict: bool | None) -> dict[str, Any]:
    """The checked schema the engine must enforce (strict rules applied), or a 400 naming `param`."""
    check(schema, param)
    return strict(schema) if is_strict else dict(schema)
