"""Structured outputs on the real server: every schema of tests/schemas, sampled at temperature 1
with several seeds, streamed and not, n = 1 and n = 2; every finished answer parses strictly and
validates (Draft 2020-12, formats checked). Also: the corpus's bounds are ones SmolLM2 breaks when
it is not constrained."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai import OpenAI

from gateway import structured
from tests.real.conftest import model
from tests.real.server import SMOLLM, GatewayServer

pytestmark = pytest.mark.real

CORPUS = sorted((Path(__file__).resolve().parents[1] / "schemas").glob("*.json"))
CASES = {path.stem: json.loads(path.read_text()) for path in CORPUS}
OTHER_TOOL = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}, "additionalProperties": False}
_RFC3339_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)"
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def _formats() -> jsonschema.FormatChecker:
    """jsonschema's own checkers (date, email, uuid...) plus RFC 3339 time and date-time."""
    checker = jsonschema.FormatChecker()

    @checker.checks("time")
    def _time(value: object) -> bool:
        return not isinstance(value, str) or re.fullmatch(_RFC3339_TIME, value) is not None

    @checker.checks("date-time")
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        date, sep, time = value.partition(value[10:11] if len(value) > 10 else "T")
        if sep not in ("T", "t", " ") or re.fullmatch(_RFC3339_TIME, time) is None:
            return False
        try:
            datetime.date.fromisoformat(date)
        except ValueError:
            return False
        return True

    return checker


FORMATS = _formats()


def strict_json(text: str) -> Any:
    """json.loads without its extensions (NaN, Infinity)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def validate(value: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(value)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    config = {"gateway": {"memory_budget": "1GiB"}, "models": {"smollm2": model(SMOLLM)}}
    server = GatewayServer(config, tmp_path_factory.mktemp("structured"))
    # A generous deadline: a busy machine may be many times slower than this one alone.
    yield OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    server.stop()


def request(case: dict[str, Any]) -> dict[str, Any]:
    """The chat completion arguments that ask for `case` in its mode."""
    schema, mode = case["schema"], case["mode"]
    args: dict[str, Any] = {"messages": [{"role": "user", "content": case["prompt"]}]}
    if mode == "json_schema":
        spec: dict[str, Any] = {"name": "answer", "schema": schema}
        if "strict" in case:
            spec["strict"] = case["strict"]
        args["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif mode == "json_object_schema":
        args["response_format"] = {"type": "json_object", "schema": schema}
    else:
        args["tools"] = [
            {"type": "function", "function": {"name": "act", "parameters": schema}},
            {"type": "function", "function": {"name": "other", "parameters": OTHER_TOOL}},
        ]
        named = {"type": "function", "function": {"name": "act"}}
        args["tool_choice"] = named if mode == "tool_named" else "required"
    return args


def answers(client: OpenAI, case: dict[str, Any], seed: int, stream: bool, n: int) -> list[tuple[str, str, str]]:
    """(finish_reason, tool name or "", text) for each choice."""
    args = request(case) | {"model": "smollm2", "temperature": 1.0, "seed": seed, "n": n}
    args["max_tokens"] = case["max_tokens"]
    if not stream:
        reply = client.chat.completions.create(**args)
        found = []
        for choice in reply.choices:
            calls = choice.message.tool_calls or []
            assert len(calls) <= 1
            if calls:
                function = calls[0].function  # type: ignore[union-attr]
                found.append((choice.finish_reason, function.name, function.arguments))
            else:
                found.append((choice.finish_reason, "", choice.message.content or ""))
        return found
    texts: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            parts = texts.setdefault(choice.index, [])
            parts.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names[choice.index] = call.function.name
                parts.append((call.function.arguments or "") if call.function else "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return [(finish[i], names.get(i, ""), "".join(texts[i])) for i in sorted(texts)]


def check_answer(case: dict[str, Any], name: str, text: str) -> None:
    schema = case["schema"]
    if case.get("strict"):
        schema = structured.strict(schema)  # all properties present, no others
    if case["mode"] == "tool_required" and name == "other":
        schema = OTHER_TOOL
    value = strict_json(text)
    validate(value, schema)
    # Compact JSON as OpenAI sends it: no whitespace outside strings, none around the answer.
    assert not re.search(r"\s", _STRINGS.sub("", text)), text


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_finished_answer_validates(client: OpenAI, name: str) -> None:
    case = CASES[name]
    tools = case["mode"].startswith("tool_")
    finished = "tool_calls" if tools else "stop"
    index = sorted(CASES).index(name)
    runs = [(100 + index, False, 1), (200 + index, True, 1), (300 + index, index % 2 == 0, 2)]
    valid = 0
    for seed, stream, n in runs:
        for finish_reason, tool, text in answers(client, case, seed, stream, n):
            if finish_reason == "length":
                continue  # cut short: not an answer the promise covers
            assert finish_reason == finished, (seed, stream, n, text)
            if tools:
                assert tool in ("act", "other") if case["mode"] == "tool_required" else tool == "act"
            check_answer(case, tool, text)
            valid += 1
    assert valid >= 1, "no answer finished within max_tokens: the schema was not exercised"


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.get("unconstrained_violates")))
def test_unconstrained_the_model_breaks_the_bounds(client: OpenAI, name: str) -> None:
    """The corpus exercises the bounds: asked for any JSON object, SmolLM2 goes out of range."""
    case = CASES[name]
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": case["prompt"]}],
        response_format={"type": "json_object"},
        max_tokens=100,
        temperature=0,
    )
    value = strict_json(reply.choices[0].message.content or "")
    with pytest.raises(jsonschema.ValidationError):
        validate(value, case["schema"])
