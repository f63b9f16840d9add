"""A reasoning model on real llama.cpp: SmolLM2 with a thinking chat template set in models.yaml
(`model.chat_template`), whose generation prompt opens the `<think>` block, so the model thinks by
construction; its budget (or, with none set, the answer's reserve of max_tokens) makes the gateway
close the block, and the model then answers. And SmolLM2 under a plain ChatML template, shown by
two earlier turns to open the block itself: a json_schema holds its answer only. Driven by the
openai and anthropic SDKs, streamed and not. Greedy and short."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from openai import OpenAI

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer

pytestmark = pytest.mark.real

BUDGET = 3
# ChatML, as SmolLM2's own, with Qwen3's thinking switch: the generation prompt opens the block.
THINKING_TEMPLATE = """\
{%- for m in messages -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% else %}<think>
{% endif -%}
{%- endif -%}"""
CHATML = """\
{%- for m in messages -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""
QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]
STORY: Any = [{"role": "user", "content": "Tell me a long story about a dragon."}]  # thinks on and on
# Two turns that open the block themselves, so that SmolLM2 (greedy) opens it too.
SHOWN: Any = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": '<think>\n2 plus 2 makes 4.\n</think>\n\n{"answer": 4}'},
    {"role": "user", "content": "What is 3+5?"},
    {"role": "assistant", "content": '<think>\n3 plus 5 makes 8.\n</think>\n\n{"answer": 8}'},
    {"role": "user", "content": "What is 6+1?"},
]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = {
        "thinker": model(SMOLLM, model={"chat_template": THINKING_TEMPLATE, "reasoning": {"budget": BUDGET}}),
        "unbudgeted": model(SMOLLM, model={"chat_template": THINKING_TEMPLATE}),
        "opener": model(SMOLLM, model={"chat_template": CHATML, "reasoning": {"format": "think"}}),
    }
    config = {"gateway": {"memory_budget": "1GiB", "spare_workers": 0}, "models": models}
    gateway = GatewayServer(config, tmp_path_factory.mktemp("thinker"))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(thinker: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{thinker.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


@pytest.fixture(scope="module")
def claude(thinker: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=thinker.base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def test_the_budget_closes_the_block_and_the_model_answers(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="thinker", messages=QUESTION, max_tokens=40, **GREEDY)
    message = completion.choices[0].message
    thinking = (message.model_extra or {}).get("reasoning_content")
    assert thinking and "<think>" not in thinking and "</think>" not in thinking
    assert message.content is not None and "</think>" not in message.content
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    reasoning_tokens = completion.usage.completion_tokens_details.reasoning_tokens or 0
    # The budget's tokens, then the end marker the gateway wrote (a few tokens of SmolLM2's vocabulary).
    assert BUDGET < reasoning_tokens <= BUDGET + 8 and reasoning_tokens < completion.usage.completion_tokens


def test_streamed_thinking_comes_first(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="thinker", messages=QUESTION, max_tokens=40, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    order: list[str] = []
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                order.append("reasoning")
            if choice.delta.content:
                order.append("content")
    assert order and order[0] == "reasoning" and order == sorted(order, key=lambda k: k != "reasoning")
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens_details.reasoning_tokens or 0) > BUDGET


def test_cut_off_mid_thought(client: OpenAI) -> None:
    # The caller's budget is larger than max_tokens: it allows the request to end mid-thought.
    completion = client.chat.completions.create(
        model="thinker", messages=QUESTION, max_tokens=4, extra_body={"max_reasoning_tokens": 8}, **GREEDY
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    assert (choice.message.model_extra or {}).get("reasoning_content")


def test_reasoning_effort_none_switches_thinking_off(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="thinker", messages=QUESTION, max_tokens=12, reasoning_effort="none", **GREEDY
    )
    message = completion.choices[0].message
    assert message.content and (message.model_extra or {}).get("reasoning_content") is None


def test_anthropic_thinking_blocks_streamed_and_sent_back(claude: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": BUDGET}
    message = claude.messages.create(
        model="thinker", max_tokens=40, messages=QUESTION, thinking=thinking, extra_body=GREEDY
    )
    kinds = [block.type for block in message.content]
    assert kinds[0] == "thinking" and "text" in kinds
    with claude.messages.stream(
        model="thinker", max_tokens=40, messages=QUESTION, thinking=thinking, extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    block = final.content[0]
    assert block.type == "thinking" and block.thinking and block.signature
    again: Any = [*QUESTION, {"role": "assistant", "content": final.content}, {"role": "user", "content": "Why?"}]
    follow = claude.messages.create(
        model="thinker", max_tokens=20, messages=again, thinking=thinking, extra_body=GREEDY
    )
    assert follow.content


def test_model_card_lists_reasoning(client: OpenAI) -> None:
    card = client.models.retrieve("thinker")
    extra = card.model_extra or {}
    assert "reasoning" in extra["capabilities"] and extra["reasoning"]["format"] == "think"
    assert extra["reasoning"]["switch"] == "enable_thinking" and extra["reasoning"]["budget"] == BUDGET


def test_with_no_budget_the_answers_reserve_closes_the_block(client: OpenAI, claude: anthropic.Anthropic) -> None:
    """Of max_tokens=40, thinking with no budget may use 24 (the answer's reserve is 16): the block
    is closed there and the model answers; without the reserve, it would think all 40 away."""
    completion = client.chat.completions.create(model="unbudgeted", messages=STORY, max_tokens=40, **GREEDY)
    message = completion.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") and message.content
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert 24 < (completion.usage.completion_tokens_details.reasoning_tokens or 0) <= 24 + 8
    stream = client.chat.completions.create(model="unbudgeted", messages=STORY, max_tokens=40, stream=True, **GREEDY)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == message.content
    adaptive: Any = {"type": "adaptive"}
    answer = claude.messages.create(
        model="unbudgeted", max_tokens=40, messages=STORY, thinking=adaptive, extra_body=GREEDY
    )
    assert [block.type for block in answer.content] == ["thinking", "text"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_holds_the_answer_after_the_models_own_thinking(client: OpenAI, stream: bool) -> None:
    """The prompt leaves the block to the model, which opens it (`<` is its first token, one of
    three of the marker: the gateway writes the rest): the thinking is free, the answer valid JSON.
    A grammar held from the first token would have left no thinking at all."""
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    thinking, content = "", ""
    if stream:
        chunks = client.chat.completions.create(
            model="opener", messages=SHOWN, max_tokens=60, response_format=response_format, stream=True, **GREEDY
        )
        for chunk in chunks:
            for choice in chunk.choices:
                thinking += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                content += choice.delta.content or ""
    else:
        completion = client.chat.completions.create(
            model="opener", messages=SHOWN, max_tokens=60, response_format=response_format, **GREEDY
        )
        message = completion.choices[0].message
        thinking, content = (message.model_extra or {}).get("reasoning_content") or "", message.content or ""
    assert thinking.strip() and "think>" not in thinking
    jsonschema.validate(json.loads(content), ANSWER_SCHEMA)


def test_json_schema_holds_a_model_that_does_not_open_the_block_from_its_first_token(client: OpenAI) -> None:
    """Nothing shown to open the block: SmolLM2's first pick is refused (no part of the marker) and
    discarded; the grammar's mask picks every token of the answer, and no thinking comes."""
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    completion = client.chat.completions.create(
        model="opener", messages=SHOWN[-1:], max_tokens=60, response_format=response_format, **GREEDY
    )
    message = completion.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") is None
    jsonschema.validate(json.loads(message.content or ""), ANSWER_SCHEMA)
