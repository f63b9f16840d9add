"""POST /v1/responses (+ GET/DELETE of stored responses) over the fake llama.cpp, checked with the openai
SDK's own Response and ResponseStreamEvent types."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from starlette.testclient import TestClient

from gateway.store.responses import MemoryStore, SqliteStore
from tests.fast.dialect_helpers import WEATHER_TOOL_RESPONSES, dialect_app, sse_events

EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(dialect_app(make_config, tmp_path)) as c:
        yield c


def create(client: TestClient, **body: Any) -> Response:
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    return Response.model_validate(response.json())


def stream(client: TestClient, **body: Any) -> list[Any]:
    """The events, each validated by the SDK's union; names and sequence numbers checked."""
    with client.stream("POST", "/v1/responses", json={"stream": True, **body}) as response:
        assert response.status_code == 200
        frames = sse_events(response)
    events = []
    for number, (name, data) in enumerate(frames):
        assert name == data["type"] and data["sequence_number"] == number
        events.append(EVENT.validate_python(data))
    return events


def assert_openai_error(response: Any, status: int, param: str | None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


def test_plain_response(client: TestClient) -> None:
    answer = create(client, model="m", input="hello there", instructions="Be brief.", max_output_tokens=3)
    assert answer.output_text == "tok0 tok1 tok2 "
    assert answer.status == "incomplete" and answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.usage is not None and answer.usage.output_tokens == 3 and answer.usage.input_tokens == 4
    done = create(client, model="m", input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}])
    assert done.status == "completed" and done.output[0].type == "message"


def test_stream_event_sequence(client: TestClient) -> None:
    events = stream(client, model="m", input="hello there", max_output_tokens=50)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-4].text == text == events[-1].response.output_text
    assert events[-1].response.usage is not None and events[-1].response.usage.output_tokens == 8


def test_function_call(client: TestClient) -> None:
    answer = create(client, model="caller", input="weather in Paris?", tools=[WEATHER_TOOL_RESPONSES])
    (call,) = answer.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
    events = stream(client, model="caller", input="weather in Paris?", tools=[WEATHER_TOOL_RESPONSES])
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Paris"}
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert events[-1].response.output[0].type == "function_call"


def test_function_call_output_round_trip(client: TestClient) -> None:
    first = create(client, model="caller", input="weather in Paris?", tools=[WEATHER_TOOL_RESPONSES])
    call = first.output[0]
    assert call.type == "function_call"
    follow = [
        {"role": "user", "content": "weather in Paris?"},
        call.model_dump(),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'},
    ]
    answer = create(client, model="m", input=follow, tools=[WEATHER_TOOL_RESPONSES])
    assert answer.output[0].type == "message"


def test_previous_response_id_continues_the_conversation(client: TestClient) -> None:
    first = create(client, model="m", input="one two three")
    second = create(client, model="m", input="four", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # the stored input (3 words) and output (8 words) come before the new input (1 word)
    assert second.usage.input_tokens == 3 + 8 + 1
    assert Response.model_validate(client.get(f"/v1/responses/{first.id}").json()).id == first.id
    assert client.delete(f"/v1/responses/{first.id}").json() == {"id": first.id, "object": "response", "deleted": True}
    gone = client.post("/v1/responses", json={"model": "m", "input": "x", "previous_response_id": first.id})
    assert_openai_error(gone, 404, "previous_response_id", "previous_response_not_found")
    assert_openai_error(client.get(f"/v1/responses/{first.id}"), 404, None)
    unstored = create(client, model="m", input="x", store=False)
    assert_openai_error(client.get(f"/v1/responses/{unstored.id}"), 404, None)


def test_streamed_responses_are_stored_too(client: TestClient) -> None:
    events = stream(client, model="m", input="one two")
    final = events[-1].response
    again = create(client, model="m", input="three", previous_response_id=final.id)
    assert again.usage is not None and again.usage.input_tokens == 2 + 8 + 1


def test_stored_responses_belong_to_their_key(make_config: Any, tmp_path: Path) -> None:
    keys = [{"id": "a", "key": "sk-alpha-123"}, {"id": "b", "key": "sk-bravo-456"}]
    with TestClient(dialect_app(make_config, tmp_path, gateway={"api_keys": keys})) as client:
        a, b = ({"Authorization": f"Bearer {k}"} for k in ("sk-alpha-123", "sk-bravo-456"))
        first = client.post("/v1/responses", json={"model": "m", "input": "hi"}, headers=a).json()
        assert client.get(f"/v1/responses/{first['id']}", headers=a).status_code == 200
        assert_openai_error(client.get(f"/v1/responses/{first['id']}", headers=b), 404, None)
        follow = {"model": "m", "input": "x", "previous_response_id": first["id"]}
        assert_openai_error(client.post("/v1/responses", json=follow, headers=b), 404, "previous_response_id")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),  # this model does not reason
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "r"}]}, "input[0].id"),  # an item_reference to nothing stored
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"background": True}, "background"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"tools": [WEATHER_TOOL_RESPONSES], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
    ],
)
def test_refused_before_the_200(client: TestClient, extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "input": "hi", "stream": True, **extra}
    assert_openai_error(client.post("/v1/responses", json=body), 400, param)


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_openai_error(
        client.post("/v1/responses", json={"model": "nope", "input": "x"}), 404, "model", "model_not_found"
    )


def test_in_band_error_then_failed(client: TestClient) -> None:
    events = stream(client, model="crashy", input="hello")
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "model_worker_crashed"
    assert events[-1].response.status == "failed"


def test_json_schema_text_format_is_accepted(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    answer = create(client, model="m", input="x", text={"format": fmt})
    assert answer.text is not None and answer.text.format is not None and answer.text.format.type == "json_schema"


def test_metrics_name_the_endpoint(client: TestClient) -> None:
    create(client, model="m", input="x")
    assert 'endpoint="/v1/responses",model="m",status="200"' in client.get("/metrics").text


def test_memory_store_is_bounded() -> None:
    store = MemoryStore(2)
    for name in ("a", "b", "c"):
        store.put(name, {"response": {"id": name}})
    assert store.get("a") is None and store.get("c") == {"response": {"id": "c"}}


def test_sqlite_store_persists_and_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "store" / "responses.db"
    store = SqliteStore(path, 2)
    for name in ("a", "b", "c"):
        store.put(name, {"response": {"id": name}, "messages": [{"role": "user", "content": "é"}]})
    store.close()
    reopened = SqliteStore(path, 2)
    assert reopened.get("a") is None
    assert reopened.get("c") == {"response": {"id": "c"}, "messages": [{"role": "user", "content": "é"}]}
    assert reopened.delete("c") and not reopened.delete("c")
    reopened.close()


def test_sqlite_store_from_configuration(make_config: Any, tmp_path: Path) -> None:
    app = dialect_app(make_config, tmp_path, gateway={"responses_store": "state/responses.db"})
    with TestClient(app) as client:
        first = create(client, model="m", input="one")
    assert (tmp_path / "state" / "responses.db").is_file()
    with TestClient(dialect_app(make_config, tmp_path, gateway={"responses_store": "state/responses.db"})) as client:
        assert client.get(f"/v1/responses/{first.id}").json()["id"] == first.id
