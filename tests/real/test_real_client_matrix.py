"""The client matrix (issue 28): LiteLLM (openai/... and anthropic/...), the OpenAI Agents SDK
(Responses and chat-completions models, sessions), pydantic-ai (OpenAI chat, OpenAI Responses,
Anthropic) and the Vercel AI SDK (openai-compatible, openai, anthropic providers), each installed from
its registry and driven against the real server (SmolLM2 on llama.cpp) as its users write it: plain,
streamed, a forced tool call, structured output, and a multi-turn conversation. Greedy and short;
the assertions are on shapes (a small model's words are not the point), so that a regression in what
any of them sends or reads fails here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from pydantic import BaseModel

from tests.real.server import CLIENT_TIMEOUT, REPO, GatewayServer

pytestmark = pytest.mark.real

MODEL = "smollm2"
NODE_DIR = REPO / "tests" / "real" / "node"
WEATHER = "sunny, 21 C"


class City(BaseModel):
    name: str
    country: str


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return WEATHER


# -- LiteLLM -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm() -> Any:
    # Offline: the model cost map is read from the package, not fetched; no telemetry.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_TELEMETRY"] = "False"
    import litellm

    litellm.telemetry = False
    return litellm


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_litellm(server: GatewayServer, litellm: Any, provider: str) -> None:
    base = f"{server.base_url}/v1" if provider == "openai" else server.base_url
    common: dict[str, Any] = {
        "model": f"{provider}/{MODEL}",
        "api_base": base,
        "api_key": "unused",
        "temperature": 0,
        "num_retries": 0,
    }
    said = litellm.completion(messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, **common)
    assert said.choices[0].message.content and said.usage.completion_tokens > 0

    stream = litellm.completion(
        messages=[{"role": "user", "content": "Name three colors."}], max_tokens=16, stream=True, **common
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2 and "".join(pieces)

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    called = litellm.completion(messages=ask, tools=[tool], tool_choice=forced, max_tokens=60, **common)
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)

    # Multi-turn: the call, its result, and an answer that may call nothing.
    round_trip = [
        *ask,
        called.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": WEATHER},
    ]
    answered = litellm.completion(messages=round_trip, tools=[tool], tool_choice="none", max_tokens=40, **common)
    text = answered.choices[0].message.content
    assert text and "tool_call" not in text

    city = litellm.completion(
        messages=[{"role": "user", "content": "Name a city and its country."}],
        response_format=City,
        max_tokens=60,
        **common,
    )
    message = city.choices[0].message
    raw = message.content or message.tool_calls[0].function.arguments  # anthropic/: a forced tool carries it
    assert City.model_validate_json(raw).name


# -- the OpenAI Agents SDK ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_openai_agents(server: GatewayServer, api: str) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        SQLiteSession,
        function_tool,
        set_tracing_disabled,
    )
    from agents.memory import OpenAIConversationsSession
    from openai import AsyncOpenAI
    from openai.types.responses import ResponseTextDeltaEvent

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    model = OpenAIResponsesModel(MODEL, client) if api == "responses" else OpenAIChatCompletionsModel(MODEL, client)
    # Room to finish: the SDK takes a response that ends `incomplete` as an error, as it would OpenAI's.
    room = ModelSettings(temperature=0, max_tokens=200)

    async def flows() -> None:
        plain = await Runner.run(Agent(name="a", model=model, model_settings=room), "Say hello.")
        assert isinstance(plain.final_output, str) and plain.final_output

        streamed = Runner.run_streamed(Agent(name="a", model=model, model_settings=room), "Say hello.")
        deltas = [
            e.data.delta
            async for e in streamed.stream_events()
            if e.type == "raw_response_event" and isinstance(e.data, ResponseTextDeltaEvent)
        ]
        assert deltas and "".join(deltas) == streamed.final_output

        tool = function_tool(get_weather)
        forced = Agent(
            name="a",
            model=model,
            tools=[tool],
            tool_use_behavior="stop_on_first_tool",
            model_settings=ModelSettings(temperature=0, max_tokens=60, tool_choice="get_weather"),
        )
        called = await Runner.run(forced, "What is the weather in Paris?")
        assert called.final_output == WEATHER  # the tool ran with the model's arguments

        structured = Agent(name="a", model=model, output_type=City, model_settings=room)
        city = await Runner.run(structured, "Name a city and its country.")
        assert isinstance(city.final_output, City) and city.final_output.name

        session: Any = OpenAIConversationsSession(openai_client=client) if api == "responses" else SQLiteSession("s")
        chatty = Agent(name="a", model=model, model_settings=room)
        await Runner.run(chatty, "My name is Ada.", session=session)
        second = await Runner.run(chatty, "What is my name?", session=session)
        assert second.final_output
        items = await session.get_items()
        assert len(items) == 4 and "Ada" in json.dumps(items[0])
        await session.clear_session()

    asyncio.run(flows())


# -- pydantic-ai -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai-chat", "openai-responses", "anthropic"])
def test_pydantic_ai(server: GatewayServer, kind: str) -> None:
    from pydantic_ai import Agent, NativeOutput
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.anthropic import AnthropicProvider
    from pydantic_ai.providers.openai import OpenAIProvider

    openai_provider = OpenAIProvider(base_url=f"{server.base_url}/v1", api_key="unused")
    model: Any = {
        "openai-chat": lambda: OpenAIChatModel(MODEL, provider=openai_provider),
        "openai-responses": lambda: OpenAIResponsesModel(MODEL, provider=openai_provider),
        "anthropic": lambda: AnthropicModel(
            MODEL, provider=AnthropicProvider(base_url=server.base_url, api_key="unused")
        ),
    }[kind]()
    settings: Any = {"temperature": 0, "max_tokens": 24}

    said = Agent(model, model_settings=settings).run_sync("Say hello.")
    assert isinstance(said.output, str) and said.output

    async def streamed() -> list[str]:
        async with Agent(model, model_settings=settings).run_stream("Name three colors.") as run:
            return [piece async for piece in run.stream_text(delta=True)]

    assert "".join(asyncio.run(streamed()))

    # A forced call: structured output through an output tool (tool_choice required).
    longer: Any = {"temperature": 0, "max_tokens": 60}
    tool_city = Agent(model, output_type=City, model_settings=longer).run_sync("Name a city and its country.")
    assert isinstance(tool_city.output, City)  # a 135M model may fill it with empty strings
    kinds = [part.part_kind for message in tool_city.all_messages() for part in message.parts]
    assert "tool-call" in kinds

    if kind != "anthropic":  # Anthropic's API has no response_format: pydantic-ai uses the output tool there
        native = Agent(model, output_type=NativeOutput(City), model_settings=longer).run_sync(
            "Name a city and its country."
        )
        assert isinstance(native.output, City) and native.output.name

    first = Agent(model, model_settings=settings).run_sync("My name is Ada.")
    second = Agent(model, model_settings=settings).run_sync("What is my name?", message_history=first.all_messages())
    assert second.output and len(second.all_messages()) == 4


# -- the Vercel AI SDK (Node) ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed on this machine")
@pytest.mark.parametrize("provider", ["compatible", "openai", "openai-chat", "anthropic"])
def test_vercel_ai_sdk(server: GatewayServer, provider: str) -> None:
    assert (NODE_DIR / "node_modules" / "ai").is_dir(), "run ./scripts/setup (it installs the AI SDK)"
    env = {**os.environ, "GATEWAY_BASE_URL": f"{server.base_url}/v1", "GATEWAY_MODEL": MODEL}
    done = subprocess.run(
        ["node", "ai_sdk.mjs", provider], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {flow: r["error"] for flow, r in results.items() if "error" in r}
    assert not failed
    assert results["plain"]["text"] and results["plain"]["outputTokens"] > 0
    assert results["stream"]["text"] and results["stream"]["chunks"] > 1
    (call,) = results["tool"]["calls"]
    assert call["name"] == "get_weather" and isinstance(call["input"]["city"], str)
    assert City.model_validate(results["structured"]["object"]).name
    assert results["multiturn"]["text"]
    assert results["toolRound"]["steps"] == 2 and "tool_call" not in results["toolRound"]["text"]
