"""The pure parts: a request's plan, the context rule, the reload diff, TTL expiry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.engine.base import completion_room
from gateway.errors import GatewayError
from gateway.memory.facts import inspect_models
from gateway.protocol import parse_chat_request, parse_completion_request
from gateway.scheduler.eviction import expired
from gateway.scheduler.reload import diff
from gateway.scheduler.slot import Slot
from gateway.scheduler.views import SlotView, Snapshot, State
from gateway.serving.plan import plan_chat, plan_completion

MSG = [{"role": "user", "content": "hi"}]
TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "mul"}},
]


@pytest.fixture
def views(make_config: Any, tmp_path: Path) -> dict[str, SlotView]:
    native = {"_template": "{{ messages }}{{ tools }}", "sampling": {"temperature": 0.3}, "output": {"max_tokens": 7}}
    doc = make_config({"m": native, "g": {}, "e": {"embedding": True, "model": {"pooling": "mean"}}})
    settings = parse_settings(doc, tmp_path)
    facts = inspect_models(settings)
    return {m: Slot(m, entry, facts[m]).view(0.0) for m, entry in settings.models.items()}


def chat(**fields: Any) -> Any:
    import json

    return parse_chat_request(json.dumps({"model": "m", "messages": MSG, **fields}).encode())


def gateway(make_config: Any, tmp_path: Path) -> Any:
    return parse_settings(make_config({"x": {}}), tmp_path).gateway


@pytest.mark.parametrize(
    ("fields", "mode", "constrained"),
    [
        ({}, "none", False),
        ({"tools": TOOLS}, "auto", False),
        ({"tools": TOOLS, "tool_choice": "none"}, "none", False),
        ({"tools": TOOLS, "tool_choice": "required"}, "required", True),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}}, "named", True),
    ],
)
def test_tool_mode_decides_template_tools_hint_constraint_and_shaper(
    views: dict[str, SlotView], make_config: Any, tmp_path: Path, fields: Any, mode: str, constrained: bool
) -> None:
    plan = plan_chat(chat(**fields), views["m"], gateway(make_config, tmp_path))
    (params,) = plan.generations
    assert plan.tools.mode == mode
    assert (params.tools is not None) == (mode != "none")
    assert (params.constraint is not None) == constrained
    assert (params.messages is not None and params.messages[0]["role"] == "system") == constrained  # the hint
    assert (
        type(plan.tools.shaper()).__name__
        == {
            "none": "Shaper",
            "auto": "AutoCall",
            "required": "RequiredCall",
            "named": "NamedCall",
        }[mode]
    )


def test_a_template_without_tools_gets_the_generic_tool_format(
    views: dict[str, SlotView], make_config: Any, tmp_path: Path
) -> None:
    auto = plan_chat(chat(tools=TOOLS), views["g"], gateway(make_config, tmp_path))
    (params,) = auto.generations
    assert auto.tools.generic and params.tools is None
    assert params.messages is not None and "You can call these functions" in params.messages[0]["content"]
    assert params.constraint is not None and "tool_call" in str(params.constraint)
    assert type(auto.tools.shaper()).__name__ == "GenericReply"
    with_format = plan_chat(
        chat(tools=TOOLS, response_format={"type": "json_object"}), views["g"], gateway(make_config, tmp_path)
    )
    assert not with_format.tools.generic and with_format.generations[0].constraint == {
        "json_schema": {"type": "object"}
    }


def test_plan_takes_model_defaults_and_request_overrides(
    views: dict[str, SlotView], make_config: Any, tmp_path: Path
) -> None:
    plan = plan_chat(chat(n=2, stream=True), views["m"], gateway(make_config, tmp_path))
    (params,) = plan.generations
    assert (params.temperature, params.max_tokens, params.n) == (0.3, 7, 2)
    assert plan.stream and not plan.include_usage
    again = plan_chat(chat(temperature=1.5, max_completion_tokens=3), views["m"], gateway(make_config, tmp_path))
    assert (again.generations[0].temperature, again.generations[0].max_tokens) == (1.5, 3)


def test_plan_refuses_what_it_can_before_any_hold(views: dict[str, SlotView], make_config: Any, tmp_path: Path) -> None:
    with pytest.raises(GatewayError) as info:
        plan_chat(chat(), views["e"], gateway(make_config, tmp_path))
    assert (info.value.status, info.value.param) == (400, "model")
    with pytest.raises(GatewayError) as info:
        plan_chat(chat(tools=TOOLS + TOOLS[:1]), views["m"], gateway(make_config, tmp_path))
    assert (info.value.status, info.value.param) == (400, "tools")


def test_completion_plan_has_one_generation_per_prompt_and_echo_per_choice(
    views: dict[str, SlotView], make_config: Any, tmp_path: Path
) -> None:
    body = parse_completion_request(b'{"model": "m", "prompt": ["a b", "c"], "n": 2, "echo": true}')
    plan = plan_completion(body, views["m"], gateway(make_config, tmp_path))
    assert [p.prompt for p in plan.generations] == ["a b", "c"]
    assert plan.echo == ("a b", "a b", "c", "c")


def test_a_plan_is_renewed_for_another_version(views: dict[str, SlotView], make_config: Any, tmp_path: Path) -> None:
    plan = plan_chat(chat(), views["m"], gateway(make_config, tmp_path))
    assert plan.for_version(views["m"]) is plan
    entry = views["m"].entry.model_copy(update={"output": views["m"].entry.output.model_copy(update={"max_tokens": 9})})
    renewed = plan.for_version(dataclasses.replace(views["m"], entry=entry))
    assert renewed.entry is entry and renewed.generations[0].max_tokens == 9


def test_the_context_rule() -> None:
    assert completion_room(10, 64, 1, None, "messages") == 54
    assert completion_room(10, 64, 2, None, "messages") == 27  # n choices share the context
    assert completion_room(10, 64, 1, 5, "messages") == 5
    with pytest.raises(GatewayError) as info:
        completion_room(64, 64, 1, None, "prompt")
    assert (info.value.status, info.value.code, info.value.param) == (400, "context_length_exceeded", "prompt")


def test_reload_diff(views: dict[str, SlotView]) -> None:
    m, e = views["m"].entry, views["e"].entry
    changed = m.model_copy(update={"pinned": True})
    result = diff({"m": m, "e": e, "gone": e}, {"e": e, "m": changed, "new": m})
    assert result.summary() == {"added": ["new"], "removed": ["gone"], "changed": ["m"], "unchanged": ["e"]}


def test_expiry_is_a_function_of_the_snapshot(views: dict[str, SlotView]) -> None:
    base = dataclasses.replace(views["m"], state=State.LOADED)
    snapshot = Snapshot(
        models=(
            dataclasses.replace(base, model_id="due", idle_expires_in=0.0),
            dataclasses.replace(base, model_id="later", idle_expires_in=3.0),
            dataclasses.replace(base, model_id="no-ttl", idle_expires_in=None),
        ),
        retiring=(),
        budget=1,
        max_loaded=None,
    )
    assert expired(snapshot) == ["due"]


def test_views_are_immutable(views: dict[str, SlotView]) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        views["m"].running = 3  # type: ignore[misc]
