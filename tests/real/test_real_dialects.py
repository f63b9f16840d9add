"""Anthropic Messages and OpenAI Responses on the real server (SmolLM2 on llama.cpp), driven by the
official `anthropic` and `openai` SDKs as their users write them. Greedy (temperature 0) and short."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.real.server import CLIENT_TIMEOUT, GatewayServer

pytestmark = pytest.mark.real

MODEL = "smollm2"
GREEDY = {"temperature": 0}  # the anthropic SDK no longer has a temperature argument; the API still takes it
WEATHER_Q = "What is the weather in Paris?"
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": CITY_SCHEMA,
}
RESPONSES_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": CITY_SCHEMA,
}


@pytest.fixture(scope="module")
def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def test_anthropic_create_and_count_tokens(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Say hello."}]
    message = claude.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, messages=messages)
    assert message.role == "assistant" and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and 0 < message.usage.output_tokens <= 8
    counted = claude.messages.count_tokens(model=MODEL, messages=messages)
    assert counted.input_tokens == message.usage.input_tokens  # the real tokenizer and chat template


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Name a color."}]
    with claude.messages.stream(model=MODEL, max_tokens=8, extra_body=GREEDY, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_stop_sequence(claude: anthropic.Anthropic) -> None:
    """Any English answer of 40 tokens has an "e" in it: the answer stops there and says so."""
    messages: Any = [{"role": "user", "content": "Describe the sea in two sentences."}]
    message = claude.messages.create(
        model=MODEL, max_tokens=40, extra_body=GREEDY, messages=messages, stop_sequences=["e", "zzqx"]
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "e"), message
    assert message.content[0].type == "text" and "e" not in message.content[0].text
    with claude.messages.stream(
        model=MODEL, max_tokens=40, extra_body=GREEDY, messages=messages, stop_sequences=["e"]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "e") and "e" not in text


def test_anthropic_tool_use_round_trip(claude: anthropic.Anthropic) -> None:
    question: Any = {"role": "user", "content": WEATHER_Q}
    # tool_choice auto: SmolLM2's template has no place for tools; the generic tool format gets the call.
    first = claude.messages.create(
        model=MODEL, max_tokens=60, extra_body=GREEDY, tools=[ANTHROPIC_TOOL], messages=[question]
    )
    assert first.stop_reason == "tool_use", first
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and isinstance(call.input, dict)
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C"}
    second = claude.messages.create(
        model=MODEL,
        max_tokens=16,
        extra_body=GREEDY,
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "none"},
        messages=[question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}],
    )
    assert second.content[0].type == "text" and second.content[0].text
    alone = claude.messages.count_tokens(model=MODEL, messages=[question]).input_tokens
    assert second.usage.input_tokens > alone + 10  # the call and its result are in the prompt


def test_anthropic_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            thinking={"type": "enabled", "budget_tokens": 1024},
        )


def test_responses_create_and_stream(client: OpenAI) -> None:
    cut = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0)
    assert cut.status == "incomplete" and cut.incomplete_details is not None and cut.output_text
    assert cut.usage is not None and cut.usage.output_tokens == 8
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=100, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas)
    # No cross-request equality: the Responses API has no seed, and an unseeded request may reuse the
    # first one's cached prefix cells, whose different batch split can flip a near-tie (docs/api.md, "Seeds").
    assert len(final.output_text) > len(cut.output_text) > 0


def test_responses_function_call_round_trip_and_previous_response_id(client: OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input=WEATHER_Q,
        tools=[RESPONSES_TOOL],
        tool_choice="required",
        max_output_tokens=40,
        temperature=0,
    )
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments).get("city"), str)
    second = client.responses.create(
        model=MODEL,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"},
        ],
        previous_response_id=first.id,
        tools=[RESPONSES_TOOL],
        tool_choice="none",
        max_output_tokens=16,
        temperature=0,
    )
    assert second.output[0].type == "message" and second.output_text
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the stored turns came back
    assert client.responses.retrieve(second.id).output_text == second.output_text


class City(BaseModel):
    name: str
    country: str


def test_responses_parse(client: OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL, input="Name a city and its country.", text_format=City, max_output_tokens=60, temperature=0
    )
    assert isinstance(parsed.output_parsed, City) and parsed.output_parsed.name


def test_chat_tools_on_auto_with_a_template_without_tools(client: OpenAI) -> None:
    """SmolLM2's template has no place for tools: they were silently dropped (the prompt was the same
    size with or without them). Now the generic tool format presents them and reads the call back."""
    question: Any = [{"role": "user", "content": WEATHER_Q}]
    tools: Any = [{"type": "function", "function": {k: v for k, v in RESPONSES_TOOL.items() if k != "type"}}]
    assert client.models.retrieve(MODEL).model_dump()["tool_template"] == "generic"
    plain = client.chat.completions.create(model=MODEL, messages=question, max_tokens=1)
    answer = client.chat.completions.create(model=MODEL, messages=question, tools=tools, max_tokens=60, temperature=0)
    assert answer.usage is not None and plain.usage is not None
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    (call,) = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    assert call.type == "function" and call.function.name == "get_weather"
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=question, tools=tools, max_tokens=60, temperature=0, stream=True
        )
    )
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None  # as OpenAI: null, not ""
    streamed = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert streamed[0].function is not None and streamed[0].function.name == "get_weather"
