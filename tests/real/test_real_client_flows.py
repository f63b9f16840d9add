"""What real client libraries hit (issue 28), through those clients against the real server (SmolLM2
on llama.cpp, a template with no place for tools): a tool round answered without tools, assistant
prefill, cut-off calls, Responses token counts, input items and conversations (the Agents SDK's
session), and Anthropic's model list."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import pytest
from openai import OpenAI

from tests.real.server import CLIENT_TIMEOUT, GatewayServer

pytestmark = pytest.mark.real

MODEL = "smollm2"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ROUND: list[Any] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
]


@pytest.fixture(scope="module")
def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def test_after_a_tool_round_no_call_json_comes_back_as_the_answer(client: OpenAI) -> None:
    for seed in range(3):
        answer = client.chat.completions.create(
            model=MODEL,
            messages=ROUND,
            tools=[TOOL],
            tool_choice="none",
            max_tokens=40,
            seed=seed,  # type: ignore[list-item]
        )
        message = answer.choices[0].message
        assert message.tool_calls is None and message.content
        assert "tool_call" not in message.content and not message.content.lstrip().startswith("{")


def test_anthropic_prefill_is_continued(claude: anthropic.Anthropic) -> None:
    prefill = "The capital of France is the city of"
    message = claude.messages.create(
        model=MODEL,
        max_tokens=8,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": prefill},
        ],
    )
    text = "".join(b.text for b in message.content if b.type == "text")
    assert text and not text.lstrip().startswith("The capital")  # a continuation, not a new answer
    assert "Paris" in prefill + text


def test_chat_forced_call_cut_by_max_tokens_is_a_partial_call(client: OpenAI, claude: anthropic.Anthropic) -> None:
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice_of_tool in (forced, "required"):
        answer = client.chat.completions.create(
            model=MODEL,
            messages=ask,
            tools=[TOOL],
            tool_choice=choice_of_tool,
            max_tokens=3,  # type: ignore[list-item]
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "length"
        assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"
    cut = claude.messages.create(
        model=MODEL,
        max_tokens=5,
        messages=ask,
        tools=[{"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}],  # type: ignore[index]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert cut.stop_reason == "max_tokens"
    (block,) = cut.content
    assert block.type == "tool_use" and block.input  # what the partial JSON holds, not {}


def test_responses_input_tokens_and_input_items(client: OpenAI) -> None:
    counted = client.responses.input_tokens.count(model=MODEL, input="Name a color.", instructions="Be brief.")
    created = client.responses.create(model=MODEL, input="Name a color.", instructions="Be brief.", max_output_tokens=8)
    assert created.usage is not None and counted.input_tokens == created.usage.input_tokens
    assert created.status == "incomplete" or created.output[0].status == "completed"
    if created.status == "incomplete":
        assert created.output[0].status == "incomplete"
    items = client.responses.input_items.list(created.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].id


def test_anthropic_models_list(claude: anthropic.Anthropic, client: OpenAI) -> None:
    first = claude.models.list(limit=2)
    assert len(first.data) == 2 and first.has_more and all(m.type == "model" for m in first.data)
    listed = list(claude.models.list(limit=2))  # the SDK follows the pages
    assert [m.id for m in listed] == [m.id for m in client.models.list()]
    assert claude.models.retrieve("smollm2").display_name == "smollm2"


def test_agents_sdk_conversations_session(server: GatewayServer) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled
    from agents.memory import OpenAIConversationsSession
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    openai_client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    agent = Agent(
        name="helper", instructions="Answer in a few words.", model=OpenAIResponsesModel(MODEL, openai_client)
    )

    async def two_turns() -> list[Any]:
        session = OpenAIConversationsSession(openai_client=openai_client)
        first = await Runner.run(agent, "My name is Ada.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
        assert first.final_output and second.final_output
        items = await session.get_items()
        popped = await session.pop_item()
        assert popped is not None and len(await session.get_items()) == len(items) - 1
        await session.clear_session()
        return items

    items = asyncio.run(two_turns())
    texts = [json.dumps(i) for i in items]
    assert len(items) == 4 and "Ada" in texts[0] and "my name" in texts[2]
