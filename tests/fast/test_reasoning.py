"""Reasoning models: the thinking apart from the answer in every family's format, with markers cut
at every position; the controls (template variables, effort, budget) and what they reach; the
answer's shape (reasoning_content, content null when cut off mid-thought, usage) through the fake
llama under the real worker loop, streamed and whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.engine import reasoning
from gateway.engine.base import GenerationParams
from gateway.engine.worker.prompt import renderer
from gateway.errors import ConfigError
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.dialect_helpers import sse_events

FIXTURES = Path(__file__).parent.parent / "fixtures" / "reasoning"


def template(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# Each family's output as its model writes it: (format, opened by the prompt, text, thinking, answer).
OUTPUTS = [
    ("think", False, "<think>\nLet me add.\n2+2=4\n</think>\n\nIt is 4.", "Let me add.\n2+2=4", "It is 4."),
    ("think", True, "\nHmm, 2+2.\n</think>\n\nFour.", "Hmm, 2+2.", "Four."),
    ("think", False, "No thinking <think> here.", "", "No thinking <think> here."),
    ("magistral", False, "[THINK]Short.[/THINK]Answer.", "Short.", "Answer."),
    ("granite", False, "<think>Plan.</think><response>Done.</response>", "Plan.", "Done."),
    (
        "harmony",
        False,
        "<|channel|>analysis<|message|>User asks 2+2.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
        "User asks 2+2.",
        "4",
    ),
]


def split_all(fmt: str, opened: bool, pieces: list[str]) -> tuple[str, str]:
    splitter = reasoning.splitter(fmt)
    out = splitter.feed(splitter.fmt.start) if opened else []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.finish()
    return "".join(t for k, t in out if k == "reasoning"), "".join(t for k, t in out if k == "content")


@pytest.mark.parametrize(("fmt", "opened", "text", "thinking", "answer"), OUTPUTS)
def test_markers_cut_at_every_position(fmt: str, opened: bool, text: str, thinking: str, answer: str) -> None:
    assert split_all(fmt, opened, [text]) == (thinking, answer)
    assert split_all(fmt, opened, list(text)) == (thinking, answer)  # a character at a time
    for cut in range(1, len(text)):
        assert split_all(fmt, opened, [text[:cut], text[cut:]]) == (thinking, answer), cut


def test_a_block_never_closed_is_all_thinking() -> None:
    assert split_all("think", True, ["Still ", "thinking </thi"]) == ("Still thinking </thi", "")


def test_harmony_commentary_to_a_function_is_a_tool_call_and_analysis_never_is() -> None:
    text = (
        '<|channel|>analysis<|message|>Maybe <tool_call>{"name": "x"}</tool_call>?<|end|>'
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>'
    )
    for cut in range(1, len(text)):
        thinking, answer = split_all("harmony", False, [text[:cut], text[cut:]])
        assert thinking == 'Maybe <tool_call>{"name": "x"}</tool_call>?'
        assert answer == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("qwen3.jinja", "think"),
        ("deepseek_r1.jinja", "think"),
        ("magistral.jinja", "magistral"),
        ("granite.jinja", "granite"),
        ("gpt_oss.jinja", "harmony"),
    ],
)
def test_format_detected_from_the_template(name: str, fmt: str | None) -> None:
    assert reasoning.detect(template(name)) == fmt
    assert reasoning.format_for("magistral", template(name)) == "magistral"
    assert reasoning.format_for("none", template(name)) is None


def test_the_switch_is_a_variable_the_template_reads() -> None:
    assert reasoning.template_switch(template("qwen3.jinja")) == "enable_thinking"
    assert reasoning.template_switch(template("granite.jinja")) == "thinking"
    assert reasoning.template_switch(template("deepseek_r1.jinja")) is None  # "thinking" in its prose only
    assert reasoning.template_takes_effort(template("gpt_oss.jinja"))


def test_the_deepseek_prompt_opens_the_block() -> None:
    fmt = reasoning.FORMATS["think"]
    assert reasoning.opens_block(fmt, template("deepseek_r1.jinja").splitlines()[-2][-12:] + "\n")
    assert not reasoning.opens_block(fmt, "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def _render(name: str, params: GenerationParams) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    texts: list[str] = []

    def tokenize(text: str, add_bos: bool, param: str) -> list[int]:
        texts.append(text)
        return [1]

    renderer(Jinja2ChatFormatter(template(name), eos_token="</s>", bos_token="<s>"), tokenize)(params)
    return texts[0]


def _params(messages: list[dict[str, Any]], kwargs: dict[str, Any] | None = None) -> GenerationParams:
    return GenerationParams(
        messages=messages, max_tokens=8, temperature=0, top_p=1, top_k=0, min_p=0, repeat_penalty=1,
        presence_penalty=0, frequency_penalty=0, stop=[], seed=None, template_kwargs=kwargs,
    )  # fmt: skip


def test_template_kwargs_reach_the_jinja_template() -> None:
    user = [{"role": "user", "content": "hi"}]
    assert _render("qwen3.jinja", _params(user)).endswith("<|im_start|>assistant\n")
    off = _render("qwen3.jinja", _params(user, {"enable_thinking": False}))
    assert off.endswith("<think>\n\n</think>\n\n")
    assert "Reasoning: high" in _render("gpt_oss.jinja", _params(user, {"reasoning_effort": "high"}))


def test_past_thinking_goes_to_the_template_never_into_the_answer_text() -> None:
    from gateway.protocol import Message

    turn = Message.model_validate({"role": "assistant", "content": "4", "reasoning_content": "2+2"})
    rendered = turn.for_template()
    assert rendered["content"] == "4" and rendered["reasoning_content"] == "2+2" and rendered["thinking"] == "2+2"
    again = [{"role": "user", "content": "2+2?"}, rendered, {"role": "user", "content": "and 3+3?"}]
    qwen = _render("qwen3.jinja", _params(again))
    assert "2+2<" not in qwen and "<|im_start|>assistant\n4<|im_end|>" in qwen  # Qwen3 drops past thinking
    assert "<|channel|>analysis<|message|>2+2<|end|>" in _render("gpt_oss.jinja", _params(again))


# -- through the gateway, on the fake llama -----------------------------------------------------

QWEN_REPLY = ["<th", "ink>\n", "Let me ", "add.", "\n</th", "ink>\n\n", "The answer ", "is 4."]
LONG_THOUGHT = ["a ", "b ", "c ", "d ", "e ", "f ", "</think>", "Done."]
SCRIPTS = {
    "qwen": FakeScript(reply=QWEN_REPLY),
    "r1": FakeScript(reply=["Hmm, ", "2+2", "</think>", "Four."], generation_prompt="<think>"),
    "endless": FakeScript(reply=["Hmm ", "still ", "thinking "], generation_prompt="<think>"),
    "budget": FakeScript(reply=LONG_THOUGHT, generation_prompt="<think>", resume_at=7),
    "json": FakeScript(generation_prompt="<think>"),
    "oss": FakeScript(
        reply=[
            "<|channel|>analysis<|message|>",
            "Need the weather.",
            "<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json",
            '<|message|>{"city": ',
            '"Paris"}<|call|>',
        ]
    ),  # thinks `tok0 tok1 ...`; constrained, answers {"ok": true}
    "tools": FakeScript(
        reply=[
            '<think>Call <tool_call>{"name": "nope", "arguments": {}}</tool_call>?</think>',
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        ]
    ),
}
MSG = [{"role": "user", "content": "2+2?"}]


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    qwen = template("qwen3.jinja")
    models: dict[str, dict[str, Any]] = {
        "plain": {},
        "qwen": {"_template": qwen},
        "r1": {"_template": template("deepseek_r1.jinja")},
        "endless": {"_template": template("deepseek_r1.jinja")},
        "budget": {"_template": template("deepseek_r1.jinja"), "model": {"reasoning": {"budget": 3}}},
        "json": {"_template": template("deepseek_r1.jinja"), "model": {"reasoning": {"budget": 2}}},
        "oss": {"_template": template("gpt_oss.jinja").replace("{{ m.content }}", "{{ m.content }}{{ tools }}")},
        "tools": {"_template": qwen.replace("{{ m.content }}", "{{ m.content }}{{ tools }}")},
    }
    settings = parse_settings(make_config(models, {"reasoning_field": "both"}), tmp_path)
    app = create_app(settings, spawn=FakeWorkers(SCRIPTS).spawn, budget=2**40)
    with TestClient(app) as c:
        yield c


def chat(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={"messages": MSG, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def streamed(client: TestClient, **body: Any) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The (field, text) deltas in order, and the usage."""
    request = {"messages": MSG, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **body}
    deltas: list[tuple[str, str]] = []
    usage: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        for _, data in sse_events(response):
            if data == "[DONE]":
                continue
            usage = data.get("usage") or usage
            for choice in data["choices"]:
                for key in ("reasoning_content", "content"):
                    if choice["delta"].get(key):
                        deltas.append((key, choice["delta"][key]))
    return deltas, usage


@pytest.mark.parametrize(
    ("model", "thinking", "answer"), [("qwen", "Let me add.", "The answer is 4."), ("r1", "Hmm, 2+2", "Four.")]
)
def test_thinking_apart_streamed_and_whole(client: TestClient, model: str, thinking: str, answer: str) -> None:
    whole = chat(client, model=model)
    message = whole["choices"][0]["message"]
    assert (message["reasoning_content"], message["reasoning"], message["content"]) == (thinking, thinking, answer)
    assert whole["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    ChatCompletion.model_validate(whole)
    deltas, usage = streamed(client, model=model)
    kinds = [k for k, _ in deltas]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning_content")  # all the thinking first
    assert "".join(t for k, t in deltas if k == "reasoning_content") == thinking
    assert "".join(t for k, t in deltas if k == "content") == answer
    assert usage == whole["usage"]


def test_log_probabilities_describe_the_answer(client: TestClient) -> None:
    choice = chat(client, model="qwen", logprobs=True)["choices"][0]
    assert "".join(entry["token"] for entry in choice["logprobs"]["content"]) == "The answer is 4."


def test_cut_off_mid_thought_answers_content_null(client: TestClient) -> None:
    # A caller's budget as large as max_tokens lets max_tokens end the thinking (else the answer's
    # reserve would close the block: test_reasoning_answer.py).
    whole = chat(client, model="endless", max_tokens=2, max_reasoning_tokens=2)
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None and choice["message"]["reasoning_content"] == "Hmm still"
    assert whole["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2


def test_the_budget_closes_the_block_and_the_model_answers(client: TestClient) -> None:
    message = chat(client, model="budget")["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("a b c", "Done.")
    per_request = chat(client, model="budget", max_reasoning_tokens=1)["choices"][0]["message"]
    assert (per_request["reasoning_content"], per_request["content"]) == ("a", "Done.")
    off = chat(client, model="budget", reasoning_effort="none")  # no switch in this template: a budget of 0
    assert off["choices"][0]["message"].get("reasoning_content") is None
    assert off["choices"][0]["message"]["content"].endswith("Done.")
    assert off["usage"]["completion_tokens_details"]["reasoning_tokens"] == 1  # the block's end, written at once


@pytest.mark.parametrize(
    "constraint",
    [
        {"response_format": {"type": "json_object"}},
        {
            "tools": [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "ok"}},
        },
    ],
    ids=["json_object", "forced tool"],
)
def test_a_constraint_applies_to_the_answer_after_free_thinking(client: TestClient, constraint: dict[str, Any]) -> None:
    message = chat(client, model="json", **constraint)["choices"][0]["message"]
    assert message["reasoning_content"] == "tok0 tok1"  # unconstrained, until the budget closed the block
    answer = message["content"] if message["content"] is not None else message["tool_calls"][0]["function"]["arguments"]
    assert json.loads(answer) == {"ok": True}


def test_reasoning_format_none_returns_the_raw_text(client: TestClient) -> None:
    message = chat(client, model="qwen", reasoning_format="none")["choices"][0]["message"]
    assert message["content"] == "".join(QWEN_REPLY) and "reasoning_content" not in message


def test_reasoning_asked_of_a_model_that_does_not_reason_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "plain", "messages": MSG, "reasoning_effort": "high"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "reasoning_effort" and "'plain'" in error["message"]
    assert chat(client, model="plain", reasoning_effort="none", max_tokens=2)["choices"][0]["message"]["content"]


def test_chat_template_kwargs_may_not_replace_the_gateways_variables(client: TestClient) -> None:
    body = {"model": "qwen", "messages": MSG, "chat_template_kwargs": {"messages": []}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "chat_template_kwargs"


def test_a_tool_call_inside_the_thinking_is_not_a_call(client: TestClient) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    whole = chat(client, model="tools", tools=[tool])
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]
    assert "nope" in choice["message"]["reasoning_content"]


def test_gpt_oss_commentary_to_a_function_is_a_tool_call(client: TestClient) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    whole = chat(client, model="oss", tools=[tool])
    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] == "Need the weather."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert whole["choices"][0]["finish_reason"] == "tool_calls"


def test_model_cards_say_what_a_model_can_do(client: TestClient) -> None:
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards["plain"]["capabilities"] == ["chat", "tools"] and "reasoning" not in cards["plain"]
    assert cards["qwen"]["capabilities"] == ["chat", "tools", "reasoning"]
    qwen = {"format": "think", "switch": "enable_thinking", "effort": "budget", "budget": None}
    assert cards["qwen"]["reasoning"] == qwen
    assert cards["oss"]["reasoning"]["format"] == "harmony" and cards["oss"]["reasoning"]["effort"] == "template"
    assert cards["budget"]["reasoning"]["budget"] == 3


# -- the template in models.yaml ------------------------------------------------------------------


def test_chat_template_file_is_read_and_checked(make_config: Any, tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_text("{{ messages[0].content }}<think>\n", encoding="utf-8")
    settings = parse_settings(make_config({"m": {"model": {"chat_template_file": "t.jinja"}}}), tmp_path)
    assert settings.models["m"].model.chat_template == "{{ messages[0].content }}<think>\n"
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.b\.model\.chat_template_file: the chat template does not parse"):
        parse_settings(make_config({"b": {"model": {"chat_template_file": "bad.jinja"}}}), tmp_path)
    with pytest.raises(ConfigError, match="chat_template"):
        parse_settings(make_config({"c": {"model": {"chat_template": "{{ oops"}}}), tmp_path)


# -- Anthropic's thinking blocks and the Responses API's reasoning items ---------------------------


def test_anthropic_thinking_blocks_with_a_signature_before_the_text(client: TestClient) -> None:
    from anthropic.types import Message as AnthropicMessage

    body = {"model": "qwen", "max_tokens": 50, "messages": MSG, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    whole = client.post("/v1/messages", json=body)
    assert whole.status_code == 200, whole.text
    message = AnthropicMessage.model_validate(whole.json())
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me add." and thinking.signature
    assert text.type == "text" and text.text == "The answer is 4."
    with client.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
        events = [data for _, data in sse_events(response)]
    deltas = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"]
    assert deltas[0] == "thinking_delta" and "text_delta" in deltas
    assert deltas.index("signature_delta") < deltas.index("text_delta")  # the thinking block ends first
    signature = next(e["delta"]["signature"] for e in events if e.get("delta", {}).get("type") == "signature_delta")
    assert signature == thinking.signature
    # The SDK sends the block back with the next turn: accepted, and it is thinking, not answer text.
    again = {**body, "messages": [*MSG, {"role": "assistant", "content": whole.json()["content"]}, *MSG]}
    assert client.post("/v1/messages", json=again).status_code == 200


def test_anthropic_without_thinking_shows_no_thinking_block(client: TestClient) -> None:
    body = {"model": "r1", "max_tokens": 50, "messages": MSG}
    for extra in ({}, {"thinking": {"type": "disabled"}}):
        content = client.post("/v1/messages", json={**body, **extra}).json()["content"]
        assert [block["type"] for block in content] == ["text"]


def test_responses_reasoning_items_with_summary_and_usage(client: TestClient) -> None:
    from openai.types.responses import Response

    body = {"model": "qwen", "input": "2+2?", "reasoning": {"effort": "medium", "summary": "auto"}}
    whole = client.post("/v1/responses", json=body)
    assert whole.status_code == 200, whole.text
    response = Response.model_validate(whole.json())
    reasoning_item, message = response.output
    assert reasoning_item.type == "reasoning" and reasoning_item.content is not None
    assert reasoning_item.content[0].text == "Let me add." and reasoning_item.summary[0].text == "Let me add."
    assert message.type == "message" and response.output_text == "The answer is 4."
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as streamed:
        kinds = [data["type"] for _, data in sse_events(streamed)]
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert "response.reasoning_summary_text.done" in kinds
    follow = {"model": "qwen", "input": "and 3+3?", "previous_response_id": response.id}
    assert client.post("/v1/responses", json=follow).status_code == 200


def test_responses_settings_that_ask_for_no_reasoning_are_accepted_by_every_model(client: TestClient) -> None:
    # What the OpenAI Agents SDK sends for a gpt-5-named model, and pydantic-ai's include.
    body = {
        "model": "plain",
        "input": "hi",
        "max_output_tokens": 3,
        "reasoning": {"effort": "none"},
        "text": {"verbosity": "low"},
        "include": ["reasoning.encrypted_content"],
    }
    assert client.post("/v1/responses", json=body).status_code == 200
    assert client.post("/v1/responses", json={**body, "reasoning": {"effort": None, "context": "x"}}).status_code == 200
    refused = client.post("/v1/responses", json={**body, "reasoning": {"effort": "high"}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning.effort"


def test_reasoning_items_sent_back_become_the_assistant_turns_thinking() -> None:
    from gateway.dialects.responses.request import input_messages, parse_responses_request

    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "2+2?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "add"}]},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
        ],
    }
    messages = input_messages(parse_responses_request(json.dumps(body).encode()))
    assert messages[1] == {"role": "assistant", "content": "4", "reasoning_content": "add"}
