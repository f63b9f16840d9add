"""Shared by the dialect tests: an app on the fake llama.cpp and an SSE reader that keeps `event:` names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from gateway.config import parse_settings
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

# The generic tool format a model without native tool support is constrained to.
WEATHER_CALL = ['{"tool_call": {"name": "get_weather", ', '"arguments": {"city": ', '"Paris"}}}']
TOOL_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools }}{% endif %}"


def dialect_app(make_config: Any, tmp_path: Path, gateway: dict[str, Any] | None = None) -> Starlette:
    """Models: `m` (plain replies), `caller` (answers with a get_weather call), `crashy` (dies mid-answer),
    `native` (a template that reads tools)."""
    big = {"n_ctx": 1024}
    models = {
        "m": {"model": big},
        "caller": {"model": big},
        "crashy": {"model": big},
        "native": {"model": big},
    }
    if not (tmp_path / "native.gguf").exists():  # make_config writes each file once, with its template
        models["native"]["_template"] = TOOL_TEMPLATE
    settings = parse_settings(make_config(models, gateway=gateway), tmp_path)
    scripts = {"caller": FakeScript(reply=WEATHER_CALL), "crashy": FakeScript(crash_after_steps=2, step_delay=0.02)}
    return create_app(settings, spawn=FakeWorkers(scripts).spawn, budget=2**40)


def sse_events(response: httpx.Response) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) per SSE frame; comments (pings of the transport) are skipped."""
    events: list[tuple[str | None, Any]] = []
    name: str | None = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
            events.append((name, data if data == "[DONE]" else json.loads(data)))
            name = None
    return events


WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_TOOL_RESPONSES = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
