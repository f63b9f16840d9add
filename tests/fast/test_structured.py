"""Schema -> constraint engine translation and the 400s for schemas it cannot enforce (no llama.cpp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from gateway import structured
from gateway.errors import GatewayError
from gateway.protocol import parse_chat_request
from gateway.serving.tools.calls import forced_schema

CORPUS = sorted((Path(__file__).resolve().parents[1] / "schemas").glob("*.json"))
SCHEMA_PARAM = "response_format.json_schema.schema"


def corpus() -> list[tuple[str, dict[str, Any]]]:
    return [(path.stem, json.loads(path.read_text())) for path in CORPUS]


def chat(**extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def schema_format(schema: Any, strict: bool | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "answer", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def refusal(body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_chat_request(body)
    assert info.value.status == 400
    return info.value


# -- a byte-level tokenizer (one token per byte, plus EOS): real matchers without a model --------

EOS = 256


class _Bytes:
    eos_token_id = EOS
    bos_token_id = None
    tokens = [bytes([b]) for b in range(256)] + [b"\xff</s>"]

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


def byte_matcher(schema: dict[str, Any]) -> LLMatcher:
    tokenizer = LLTokenizer(TokenizerWrapper(_Bytes()))
    matcher = LLMatcher(tokenizer, structured.grammar(schema), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher


def accepts(schema: dict[str, Any], text: str) -> bool:
    """Whether the compiled grammar takes `text` as a complete answer."""
    matcher = byte_matcher(schema)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


# -- the corpus -----------------------------------------------------------------------------------


def test_the_corpus_is_large_and_covers_every_keyword() -> None:
    assert len(CORPUS) >= 30
    text = " ".join(json.dumps(case["schema"]) for _, case in corpus())
    for keyword in (
        "type", "null", "enum", "const", "required", "additionalProperties", "items", "minItems", "maxItems",
        "$ref", "$defs", "anyOf", "allOf", "minLength", "maxLength", "pattern", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf", '"date"', '"time"', '"date-time"', '"uuid"',
        '"email"',
    ):  # fmt: skip
        assert f'"{keyword}"' in text or keyword in text, keyword
    modes = {case["mode"] for _, case in corpus()}
    assert modes == {"json_schema", "json_object_schema", "tool_named", "tool_required"}
    assert sum(bool(case.get("unconstrained_violates")) for _, case in corpus()) >= 2


@pytest.mark.parametrize(("name", "case"), corpus(), ids=[name for name, _ in corpus()])
def test_every_corpus_schema_is_valid_and_accepted(name: str, case: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(case["schema"])
    structured.check(case["schema"], SCHEMA_PARAM)


# -- what the grammar enforces --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        (
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5}}},
            '{"n":5}',
            '{"n":6}',
        ),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}, '{"n":1}', '{"n":0}'),
        ({"type": "object", "properties": {"x": {"type": "number", "maximum": 1}}}, '{"x":0.5}', '{"x":5}'),
        ({"type": "object", "properties": {"x": {"type": "number", "exclusiveMaximum": 1}}}, '{"x":0.9}', '{"x":1}'),
        ({"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}}}, '{"s":"abc"}', '{"s":"abcd"}'),
        ({"type": "object", "properties": {"s": {"type": "string", "minLength": 2}}}, '{"s":"ab"}', '{"s":"a"}'),
        (
            {"type": "object", "properties": {"s": {"type": "string", "pattern": "^[0-9]{2}$"}}},
            '{"s":"12"}',
            '{"s":"1a"}',
        ),
        (
            {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}},
            '{"d":"2024-02-29"}',
            '{"d":"2024-13-01"}',
        ),
        ({"type": "object", "properties": {"a": {"type": "array", "maxItems": 1}}}, '{"a":[1]}', '{"a":[1,2]}'),
        ({"type": "object", "properties": {"m": {"type": "integer", "multipleOf": 3}}}, '{"m":9}', '{"m":10}'),
        ({"type": "object", "properties": {"e": {"enum": ["x", "y"]}}}, '{"e":"y"}', '{"e":"z"}'),
        ({"type": "object", "properties": {"a": {}}, "additionalProperties": False}, '{"a":1}', '{"a":1,"b":2}'),
        ({"type": "object", "properties": {"a": {}}, "required": ["a"]}, '{"a":1}', "{}"),
        ({"type": "object"}, '{"s":"a\\nb"}', '{"s":"a\nb"}'),  # no raw control characters in strings
        ({"type": "object"}, '{"a":1}', '{ "a": 1 }'),  # compact: no stray whitespace
        ({"type": "object"}, '{"a":1}', "[1]"),
    ],
)
def test_the_grammar_takes_valid_and_refuses_invalid_answers(schema: dict[str, Any], good: str, bad: str) -> None:
    assert accepts(schema, good)
    assert not accepts(schema, bad)


def test_times_have_bounded_fractions_unless_the_schema_bounds_them() -> None:
    schema = {"type": "object", "properties": {"t": {"type": "string", "format": "time"}}}
    assert accepts(schema, '{"t":"20:05:28.123456+01:00"}')
    assert not accepts(schema, '{"t":"20:05:28.' + "1" * 40 + 'Z"}')
    assert "maxLength" not in schema["properties"]["t"]  # the client's schema is left as it was
    value = {"type": "object", "properties": {"v": {"const": {"format": "time"}}}}
    assert accepts(value, '{"v":{"format":"time"}}')  # a value that looks like a schema is a value


def test_a_recursive_schema_compiles_and_holds() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["v", "kids"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    assert accepts(tree, '{"v":1,"kids":[{"v":2,"kids":[]}]}')
    assert not accepts(tree, '{"v":1,"kids":[{"v":2}]}')


# -- strict mode ----------------------------------------------------------------------------------


def test_strict_requires_every_property_and_forbids_others_at_every_level() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "object", "properties": {"c": {"type": "integer"}}}},
        "$defs": {"d": {"type": "object", "properties": {"e": {"type": "null"}}}},
    }
    result = structured.strict(schema)
    assert result["required"] == ["a", "b"] and result["additionalProperties"] is False
    assert result["properties"]["b"] == {
        "type": "object",
        "properties": {"c": {"type": "integer"}},
        "required": ["c"],
        "additionalProperties": False,
    }
    assert result["$defs"]["d"]["required"] == ["e"]
    assert "required" not in schema  # the client's schema is left as it was


def test_response_format_constraints() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    strict = parse_chat_request(chat(response_format=schema_format(schema, strict=True)))
    assert strict.response_format is not None
    assert strict.response_format.constraint() == {"json_schema": structured.strict(schema)}
    loose = parse_chat_request(chat(response_format=schema_format(schema)))
    assert loose.response_format is not None and loose.response_format.constraint() == {"json_schema": schema}
    plain = parse_chat_request(chat(response_format={"type": "json_object"}))
    assert plain.response_format is not None and plain.response_format.constraint() == {
        "json_schema": {"type": "object"}
    }
    # llama-cpp-python's extension: json_object with a schema enforces that schema
    extended = parse_chat_request(chat(response_format={"type": "json_object", "schema": schema}))
    assert extended.response_format is not None and extended.response_format.constraint() == {"json_schema": schema}


def test_a_strict_forced_tool_follows_strict_rules() -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters, "strict": True}}
    assert forced_schema([tool], "f") == structured.strict(parameters)
    wrapper = forced_schema([tool], None)["anyOf"][0]
    assert wrapper["additionalProperties"] is False and wrapper["required"] == ["name", "arguments"]


# -- 400s -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"if": {"type": "string"}, "then": {"maxLength": 2}}, "if"),
        ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties"),
        ({"type": "string", "format": "hostnameish"}, "hostnameish"),
        ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
        ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "incompatible types"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ],
)
def test_a_keyword_the_engine_cannot_enforce_is_a_400_naming_it(schema: dict[str, Any], keyword: str) -> None:
    error = refusal(chat(response_format=schema_format(schema)))
    assert error.param == SCHEMA_PARAM
    assert SCHEMA_PARAM in error.message and keyword in error.message


def test_json_object_schema_and_forced_tool_parameters_are_checked_too() -> None:
    bad = {"type": "array", "uniqueItems": True}
    error = refusal(chat(response_format={"type": "json_object", "schema": bad}))
    assert error.param == "response_format.schema" and "uniqueItems" in error.message
    tools = [
        {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "odd", "parameters": bad}},
    ]
    for choice in ("required", {"type": "function", "function": {"name": "odd"}}):
        error = refusal(chat(tools=tools, tool_choice=choice))
        assert error.param == "tools[1].function.parameters" and "uniqueItems" in error.message
    # tools the model only may call are not constrained, so not checked
    parse_chat_request(chat(tools=tools, tool_choice="auto"))
    parse_chat_request(chat(tools=tools, tool_choice={"type": "function", "function": {"name": "ok"}}))


def test_a_schema_that_is_not_an_object_is_a_400() -> None:
    error = refusal(chat(response_format=schema_format(["type", "object"])))
    assert error.param in (SCHEMA_PARAM, "response_format.json_schema.schema")


def test_a_model_default_schema_the_engine_cannot_enforce_is_a_config_error(make_config: Any, tmp_path: Path) -> None:
    from gateway.config import parse_settings
    from gateway.errors import ConfigError

    good = make_config({"m": {"output": {"grammar_schema": {"type": "object"}}}})
    assert parse_settings(good, tmp_path).models["m"].output.grammar_schema == {"type": "object"}
    bad = make_config({"m": {"output": {"grammar_schema": {"type": "array", "uniqueItems": True}}}})
    with pytest.raises(ConfigError, match=r"models\.m\.output\.grammar_schema: .*uniqueItems"):
        parse_settings(bad, tmp_path)
