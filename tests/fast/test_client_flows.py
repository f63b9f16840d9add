"""What real client libraries send, on the fake llama.cpp: a tool round answered without tools on a
template that has no place for them, assistant prefill, cut-off answers, Anthropic's model list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.engine.worker.prompt import continued
from gateway.errors import GatewayError
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.dialect_helpers import WEATHER_TOOL_ANTHROPIC, WEATHER_TOOL_RESPONSES, sse_events

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_ROUND = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
]
ANSWER = ['{"response": ', '"Sunny in Paris."}']


def app_with(make_config: Any, tmp_path: Path, scripts: dict[str, FakeScript]) -> TestClient:
    settings = parse_settings(make_config({name: {"model": {"n_ctx": 1024}} for name in scripts}), tmp_path)
    return TestClient(create_app(settings, spawn=FakeWorkers(scripts).spawn, budget=2**40))


@pytest.fixture
def answering(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    """`m`: a template with no place for tools that answers in the generic format."""
    with app_with(make_config, tmp_path, {"m": FakeScript(reply=ANSWER)}) as client:
        yield client


# -- 1. after a tool round, on a template without tools, an answer that may call nothing ----------


@pytest.mark.parametrize("stream", [False, True])
def test_chat_after_a_tool_round_without_tools_answers_text(answering: TestClient, stream: bool) -> None:
    body = {"model": "m", "messages": TOOL_ROUND, "tools": TOOLS, "tool_choice": "none", "stream": stream}
    if stream:
        with answering.stream("POST", "/v1/chat/completions", json=body) as response:
            frames = [d for _, d in sse_events(response) if d != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in frames if c["choices"])
    else:
        text = answering.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert text == "Sunny in Paris."
    # Without `tools` at all (the client dropped them after the round), the same.
    del body["tools"], body["tool_choice"]
    body["stream"] = False
    assert answering.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == (
        "Sunny in Paris."
    )


def test_responses_after_a_tool_round_without_tools_answers_text(answering: TestClient) -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny, 21 C"},
        ],
        "tools": [WEATHER_TOOL_RESPONSES],
        "tool_choice": "none",
    }
    output = answering.post("/v1/responses", json=body).json()["output"]
    assert [p["text"] for item in output for p in item["content"]] == ["Sunny in Paris."]


def test_anthropic_after_a_tool_round_without_tools_answers_text(answering: TestClient) -> None:
    body = {
        "model": "m",
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "sunny, 21 C"}]},
        ],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "none"},
    }
    content = answering.post("/v1/messages", json=body).json()["content"]
    assert content == [{"type": "text", "text": "Sunny in Paris."}]


# -- 4. cut-off answers keep their shape -----------------------------------------------------------

CUT_CALL = ['{"city": ', '"Par', 'is"}']


@pytest.fixture
def cutting(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    """`m`: answers with the arguments of a get_weather call (a forced call), `t`: with text."""
    scripts = {
        "m": FakeScript(reply=CUT_CALL),
        "t": FakeScript(reply=["The ", "answer ", "is ", "long."]),
        "r": FakeScript(reply=['{"name": "get_', 'weather", "arguments": ', '{"city": ', '"Paris"}}']),
    }
    with app_with(make_config, tmp_path, scripts) as client:
        yield client


def test_chat_forced_call_cut_by_max_tokens_keeps_its_partial_arguments(cutting: TestClient) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    body = {"model": "m", "messages": TOOL_ROUND[:1], "tools": TOOLS, "tool_choice": forced, "max_tokens": 2}
    choice = cutting.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Par'}


@pytest.mark.parametrize(("max_tokens", "arguments"), [(1, ""), (3, '{"city":'), (None, '{"city": "Paris"}')])
def test_chat_required_call_cut_by_max_tokens_is_still_a_call(
    cutting: TestClient, max_tokens: int | None, arguments: str
) -> None:
    body = {"model": "r", "messages": TOOL_ROUND[:1], "tools": TOOLS, "tool_choice": "required"}
    choice = cutting.post("/v1/chat/completions", json={**body, "max_tokens": max_tokens}).json()["choices"][0]
    assert choice["finish_reason"] == ("tool_calls" if max_tokens is None else "length")
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": arguments}


def test_anthropic_tool_use_cut_by_max_tokens_holds_its_partial_input(cutting: TestClient) -> None:
    body = {
        "model": "m",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    answer = cutting.post("/v1/messages", json=body).json()
    assert answer["stop_reason"] == "max_tokens"
    (block,) = answer["content"]
    assert block["type"] == "tool_use" and block["input"] == {"city": "Par"}


@pytest.mark.parametrize("stream", [False, True])
def test_responses_cut_message_is_incomplete(cutting: TestClient, stream: bool) -> None:
    body = {"model": "t", "input": "Tell me.", "max_output_tokens": 2, "stream": stream}
    if stream:
        with cutting.stream("POST", "/v1/responses", json=body) as response:
            events = sse_events(response)
        response_body = events[-1][1]["response"]
        done = [d["item"] for name, d in events if name == "response.output_item.done"]
        assert done == response_body["output"]
    else:
        response_body = cutting.post("/v1/responses", json=body).json()
    assert response_body["status"] == "incomplete"
    (item,) = response_body["output"]
    assert item["status"] == "incomplete" and item["content"][0]["text"] == "The answer "


# -- 2. a final assistant message is continued -----------------------------------------------------

CHATML = "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is the city of<|im_end|>\n<|im_start|>assistant\n"  # noqa: E501


def test_a_prefilled_prompt_ends_inside_the_final_assistant_turn() -> None:
    prompt = continued(CHATML, "The capital of France is the city of")
    assert prompt.endswith("<|im_start|>assistant\nThe capital of France is the city of")
    assert continued(CHATML, "The capital of France is the city of ").endswith("city of")  # a trimming template
    with pytest.raises(GatewayError) as info:
        continued(CHATML, "Not in the prompt")
    assert info.value.status == 400


def test_a_final_assistant_message_is_answered_by_its_continuation(make_config: Any, tmp_path: Path) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": 'The capital of France is "'},
    ]
    with app_with(make_config, tmp_path, {"m": FakeScript(reply=["Paris", '".'])}) as client:
        anthropic = {"model": "m", "max_tokens": 16, "messages": messages}
        assert client.post("/v1/messages", json=anthropic).json()["content"] == [{"type": "text", "text": 'Paris".'}]
        chat = client.post("/v1/chat/completions", json={"model": "m", "messages": messages}).json()
        assert chat["choices"][0]["message"]["content"] == 'Paris".'
        # A constraint would apply to the continuation as if it were a whole answer: refused.
        constrained = {"model": "m", "messages": messages, "response_format": {"type": "json_object"}}
        refused = client.post("/v1/chat/completions", json=constrained)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"


# -- 5. the model list in Anthropic's shape --------------------------------------------------------

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}


def test_anthropic_clients_get_anthropic_model_objects(make_config: Any, tmp_path: Path) -> None:
    with app_with(make_config, tmp_path, {"a": FakeScript(), "b": FakeScript(), "c": FakeScript()}) as client:
        page = client.get("/v1/models", headers=ANTHROPIC_HEADERS).json()
        assert [m["id"] for m in page["data"]] == ["a", "b", "c"] and page["has_more"] is False
        assert page["first_id"] == "a" and page["last_id"] == "c"
        first = page["data"][0]
        assert first["type"] == "model" and first["display_name"] == "a" and first["created_at"].endswith("Z")
        # Paging as Anthropic's list pages.
        head = client.get("/v1/models?limit=2", headers=ANTHROPIC_HEADERS).json()
        assert [m["id"] for m in head["data"]] == ["a", "b"] and head["has_more"] is True
        tail = client.get(f"/v1/models?limit=2&after_id={head['last_id']}", headers=ANTHROPIC_HEADERS).json()
        assert [m["id"] for m in tail["data"]] == ["c"] and tail["has_more"] is False
        back = client.get("/v1/models?limit=1&before_id=c", headers=ANTHROPIC_HEADERS).json()
        assert [m["id"] for m in back["data"]] == ["b"] and back["has_more"] is True
        bad = client.get("/v1/models?limit=0", headers=ANTHROPIC_HEADERS)
        assert bad.status_code == 400 and bad.json()["type"] == "error"
        # One model, and a missing one in Anthropic's error shape.
        one = client.get("/v1/models/b", headers=ANTHROPIC_HEADERS).json()
        assert set(one) == {"type", "id", "display_name", "created_at"} and one["id"] == "b"
        missing = client.get("/v1/models/zzz", headers=ANTHROPIC_HEADERS)
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        # OpenAI's clients are unchanged.
        assert client.get("/v1/models").json()["object"] == "list"
        assert client.get("/v1/models/b").json()["object"] == "model"


# -- 6. every accepted chat field does what docs/api.md says --------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("metadata", {"run": "42"}, 200),
        ("prompt_cache_key", "tenant-1", 200),
        ("safety_identifier", "user-hash", 200),
        ("user", "u1", 200),
        ("store", False, 200),
        ("service_tier", "auto", 200),
        ("service_tier", "default", 200),
        ("verbosity", "medium", 200),
        ("store", True, 400),
        ("service_tier", "flex", 200),
        ("service_tier", "priority", 200),
        ("service_tier", "scale", 400),
        ("verbosity", "low", 400),
        ("verbosity", "high", 400),
        ("metadata", {"k": 1}, 400),
        ("metadata", {f"k{i}": "v" for i in range(17)}, 400),
    ],
)
def test_chat_fields_are_kept_or_refused(answering: TestClient, field: str, value: Any, status: int) -> None:
    body = {"model": "m", "messages": TOOL_ROUND[:1], field: value}
    response = answering.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    if status == 400:
        assert response.json()["error"]["param"].startswith(field)


# -- 3. input_tokens, input_items, conversations (through the openai SDK's own types) --------------


def sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client)


def test_responses_input_tokens_counts_the_prompt(answering: TestClient) -> None:
    counted = sdk(answering).responses.input_tokens.count(model="m", input="Weather in Paris?")
    assert counted.object == "response.input_tokens"
    created = answering.post("/v1/responses", json={"model": "m", "input": "Weather in Paris?"}).json()
    assert counted.input_tokens == created["usage"]["input_tokens"] > 0
    longer = sdk(answering).responses.input_tokens.count(model="m", input="Weather in Paris?", instructions="Be brief.")
    assert longer.input_tokens > counted.input_tokens


def test_responses_input_items_lists_what_a_response_was_given(answering: TestClient) -> None:
    client = sdk(answering)
    turns: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    ]
    created = client.responses.create(model="m", input=turns)
    items = list(client.responses.input_items.list(created.id, order="asc"))
    assert [(i.type, getattr(i, "role", None)) for i in items] == [("message", "developer"), ("message", "user")]
    assert all(i.id for i in items)
    newest_first = client.responses.input_items.list(created.id, limit=1)
    assert [i.id for i in newest_first.data] == [items[1].id] and newest_first.has_more
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_missing")


def test_conversations_keep_items_and_responses_extend_them(answering: TestClient) -> None:
    client = sdk(answering)
    conversation = client.conversations.create(
        metadata={"topic": "weather"}, items=[{"type": "message", "role": "user", "content": "Hello"}]
    )
    assert conversation.object == "conversation" and conversation.metadata == {"topic": "weather"}
    added = client.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "Weather in Paris?"}]
    )
    assert len(added.data) == 1 and added.first_id == added.last_id
    answer = client.responses.create(model="m", input="And tomorrow?", conversation=conversation.id)
    assert answer.output_text == "".join(ANSWER)  # no tool round here: the fake's text as it is
    items = list(client.conversations.items.list(conversation.id, order="asc"))
    texts = [part.text for item in items if item.type == "message" for part in item.content]  # type: ignore[union-attr]
    assert texts == ["Hello", "Weather in Paris?", "And tomorrow?", "".join(ANSWER)]
    # The conversation is the history of the next answer: its prompt holds every item.
    again = client.responses.input_tokens.count(model="m", input="x", conversation=conversation.id)
    alone = client.responses.input_tokens.count(model="m", input="x")
    assert again.input_tokens > alone.input_tokens
    # One item, deleted; the conversation, updated, then deleted.
    last = client.conversations.items.retrieve(items[-1].id, conversation_id=conversation.id)
    assert last.id == items[-1].id
    client.conversations.items.delete(items[-1].id, conversation_id=conversation.id)
    assert len(client.conversations.items.list(conversation.id).data) == 3
    assert client.conversations.update(conversation.id, metadata={"topic": "x"}).metadata == {"topic": "x"}
    assert client.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)
    with pytest.raises(openai.BadRequestError):
        client.conversations.create(items=[{"type": "web_search_call"}])  # type: ignore[list-item]


@pytest.mark.parametrize("stream", [False, True])
def test_item_references_name_stored_output_items(cutting: TestClient, stream: bool) -> None:
    """The AI SDK's Responses provider sends a stored call back as `{"type": "item_reference", "id"}`."""
    forced = {"type": "function", "name": "get_weather"}
    body = {"model": "m", "input": "Weather?", "tools": [WEATHER_TOOL_RESPONSES], "tool_choice": forced}
    if stream:
        with cutting.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
            output = sse_events(response)[-1][1]["response"]["output"]
    else:
        output = cutting.post("/v1/responses", json=body).json()["output"]
    (call,) = output
    follow = {
        "model": "t",
        "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "item_reference", "id": call["id"]},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
        ],
    }
    answered = cutting.post("/v1/responses", json=follow)
    assert answered.status_code == 200
    items = cutting.get(f"/v1/responses/{answered.json()['id']}/input_items", params={"order": "asc"}).json()["data"]
    assert items[1]["type"] == "function_call" and items[1]["arguments"] == call["arguments"]
    follow["input"][1]["id"] = call["id"].rsplit("_", 1)[0] + "_7"  # type: ignore[index]
    missing = cutting.post("/v1/responses", json=follow)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "input[1].id"
