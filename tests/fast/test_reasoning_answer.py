"""A reasoning model's answer under the gateway's care: a constraint (json_schema, json_object, a
forced tool call) holds the answer only, also where the model opens its own block (the thinking is
free, the grammar waits for the end marker, and a pick it refuses is accepted by nothing); and with
no budget set, the thinking leaves the answer a reserve of max_tokens (the block is closed for it),
while a caller's budget as large as max_tokens still lets max_tokens end the thinking."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.engine import reasoning
from gateway.engine.worker.backend import SamplerSettings
from gateway.engine.worker.batch import Batch
from gateway.engine.worker.sequences import Thinking, answer_reserve
from gateway.testing.fakellama import EOS, JSON_BASE, JSON_PIECES, REPLY_BASE, FakeLlama, FakeSampler, FakeScript
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.dialect_helpers import sse_events
from tests.fast.test_batching import Recorder, request, run
from tests.fast.test_reasoning import MSG, chat, streamed, template

JSON = [JSON_BASE + k for k in range(len(JSON_PIECES))]
OWN_BLOCK = ["<think>", "Let me see.", "</think>", "Sure, here it is:"]  # opens its block itself
SPLIT_MARKER = ["<th", "ink>", "Let me see.", "</think>", "Sure, here it is:"]  # ... in two tokens
NO_BLOCK = ["Sure, ", "here it is:"]  # a model that answers at once


# -- the splitter's view of a block's start -------------------------------------------------------


def test_a_start_marker_is_told_before_anything_else() -> None:
    split = reasoning.splitter("think")
    assert isinstance(split, reasoning.Splitter)
    assert (split.opening("<think>"), split.opening(" <think>\nHm"), split.opening("<th")) == ("", "", "ink>")
    assert split.opening("{") is None and split.opening("") is None and split.opening("  ") is None
    split.feed("\n")  # whitespace first: still before the answer
    assert split.opening("<think>") == ""
    split.feed("{")
    assert split.opening("<think>") is None  # the answer has begun
    assert reasoning.splitter("magistral").opening("[THINK]") == ""  # type: ignore[union-attr]


# -- the worker's batch: what each sampler took, and what its grammar consumed ---------------------


def constrained_run(reply: list[str], resume_at: int = 0) -> tuple[str, FakeSampler, FakeLlama]:
    backend = FakeLlama(script=FakeScript(reply=reply, grammar_holds=True, resume_at=resume_at))
    recorder = Recorder()
    batch = Batch(backend, 1, recorder, recorder)
    samplers: list[FakeSampler] = []
    make = backend.sampler

    def sampler(settings: SamplerSettings, seed: int) -> FakeSampler:
        samplers.append(make(settings, seed))
        return samplers[-1]

    backend.sampler = sampler  # type: ignore[method-assign]
    settings = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0, grammar="fake-json")
    close = tuple(backend.tokenize("</think>", False))
    thinking = Thinking("think", 100, opened=False, close=close)
    batch.submit(request(backend, 1, "json please", limit=40, settings=settings, thinking=thinking))
    run(batch, backend)
    return recorder.text(1), samplers[0], backend


def test_a_model_that_opens_its_own_block_thinks_freely_then_the_grammar_holds() -> None:
    text, sampler, _ = constrained_run(OWN_BLOCK)
    assert text == '<think>Let me see.</think>{"ok": true}'
    # The marker and the thinking were taken freely; "Sure, ..." was refused, and accepted by nothing.
    assert sampler.taken == [REPLY_BASE, REPLY_BASE + 1, REPLY_BASE + 2, *JSON, EOS]
    assert sampler.consumed == [*JSON, EOS]


def test_a_marker_begun_in_part_is_finished_by_the_gateway() -> None:
    text, sampler, backend = constrained_run(SPLIT_MARKER, resume_at=2)
    assert text == '<think> Let me see.</think>{"ok": true}'  # "ink> ": the fake's word, written by the gateway
    assert sampler.taken == [REPLY_BASE, REPLY_BASE + 2, REPLY_BASE + 3, *JSON, EOS]  # not the word it wrote
    assert sampler.consumed == [*JSON, EOS]
    assert backend.tokenize("ink>", False)[0] in [row.token for rows in backend.decodes for row in rows]


def test_a_model_that_does_not_think_is_held_from_its_first_token() -> None:
    text, sampler, _ = constrained_run(NO_BLOCK)
    assert text == '{"ok": true}'
    assert sampler.taken == sampler.consumed == [*JSON, EOS]


@pytest.mark.parametrize(
    ("limit", "reserve"), [(1, 0), (2, 1), (10, 5), (32, 16), (40, 16), (64, 16), (100, 25), (4096, 1024)]
)
def test_the_answers_reserve(limit: int, reserve: int) -> None:
    assert answer_reserve(limit) == reserve


# -- through the gateway -------------------------------------------------------------------------

HARMONY = [
    "<|channel|>analysis<|message|>",
    "Need JSON.",
    "<|end|><|start|>assistant<|channel|>final<|message|>",
    "Sure",
]
SCRIPTS = {
    "opener": FakeScript(reply=OWN_BLOCK, grammar_holds=True),
    "split": FakeScript(reply=SPLIT_MARKER, grammar_holds=True, resume_at=2),
    "plain": FakeScript(reply=NO_BLOCK, grammar_holds=True),
    "oss": FakeScript(reply=HARMONY, grammar_holds=True),
    # Thinks `tok0 tok1 ...` from the prompt's <think> and never closes the block; after the end
    # marker the gateway writes, it answers `tok90 ... tok99`.
    "long": FakeScript(reply_tokens=100, generation_prompt="<think>", resume_at=90),
}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "ok", "schema": {"type": "object"}}}
FORCED_TOOL = {
    "tools": [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "ok"}},
}


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    qwen = template("qwen3.jinja")  # its generation prompt leaves the block to the model
    models: dict[str, dict[str, Any]] = {
        "opener": {"_template": qwen},
        "split": {"_template": qwen},
        "plain": {},
        "oss": {"_template": template("gpt_oss.jinja")},
        "long": {"_template": template("deepseek_r1.jinja")},
    }
    settings = parse_settings(make_config(models), tmp_path)
    app = create_app(settings, spawn=FakeWorkers(SCRIPTS).spawn, budget=2**40)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("model", ["opener", "split"])
def test_json_schema_holds_the_answer_after_the_models_own_thinking(client: TestClient, model: str) -> None:
    message = chat(client, model=model, response_format=SCHEMA)["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me see."
    assert json.loads(message["content"]) == {"ok": True}
    deltas, _ = streamed(client, model=model, response_format=SCHEMA)
    assert "".join(t for k, t in deltas if k == "reasoning_content") == "Let me see."
    assert json.loads("".join(t for k, t in deltas if k == "content")) == {"ok": True}


def test_a_forced_tool_call_after_the_models_own_thinking(client: TestClient) -> None:
    choice = chat(client, model="opener", **FORCED_TOOL)["choices"][0]
    assert choice["message"]["reasoning_content"] == "Let me see."
    call = choice["message"]["tool_calls"][0]["function"]
    assert (call["name"], json.loads(call["arguments"])) == ("ok", {"ok": True})


def test_a_model_that_does_not_think_answers_json_and_nothing_else(client: TestClient) -> None:
    message = chat(client, model="plain", response_format=SCHEMA)["choices"][0]["message"]
    assert message["content"] == '{"ok": true}' and "reasoning_content" not in message


def test_gpt_oss_thinks_in_its_analysis_then_the_final_channel_is_held(client: TestClient) -> None:
    message = chat(client, model="oss", response_format=SCHEMA)["choices"][0]["message"]
    assert message["reasoning_content"] == "Need JSON." and json.loads(message["content"]) == {"ok": True}


def test_with_no_budget_the_reserve_closes_the_block_and_the_model_answers(client: TestClient) -> None:
    answer = "".join(f"tok{k} " for k in range(90, 100))
    whole = chat(client, model="long", max_tokens=40)
    choice = whole["choices"][0]
    thinking = " ".join(f"tok{k}" for k in range(40 - answer_reserve(40)))
    assert (choice["message"]["reasoning_content"], choice["message"]["content"]) == (thinking, answer)
    assert choice["finish_reason"] == "stop"
    assert whole["usage"]["completion_tokens_details"]["reasoning_tokens"] == 24 + 1  # and the end marker
    deltas, usage = streamed(client, model="long", max_tokens=40)
    assert "".join(t for k, t in deltas if k == "content") == answer and usage == whole["usage"]


def test_a_budget_as_large_as_max_tokens_may_end_the_request_mid_thought(client: TestClient) -> None:
    choice = chat(client, model="long", max_tokens=40, max_reasoning_tokens=40)["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"].endswith("tok39")


def test_anthropic_adaptive_thinking_leaves_the_reserve_and_a_budget_may_spend_it(client: TestClient) -> None:
    body = {"model": "long", "max_tokens": 40, "messages": MSG, "temperature": 0}
    adaptive = client.post("/v1/messages", json={**body, "thinking": {"type": "adaptive"}}).json()
    assert [block["type"] for block in adaptive["content"]] == ["thinking", "text"]
    assert adaptive["stop_reason"] == "end_turn" and adaptive["content"][1]["text"].startswith("tok90")
    with client.stream("POST", "/v1/messages", json={**body, "thinking": {"type": "adaptive"}, "stream": True}) as r:
        texts = [e["delta"]["text"] for _, e in sse_events(r) if e.get("delta", {}).get("type") == "text_delta"]
    assert "".join(texts) == adaptive["content"][1]["text"]
    spent = {**body, "thinking": {"type": "enabled", "budget_tokens": 40}}
    whole = client.post("/v1/messages", json=spent).json()
    assert [block["type"] for block in whole["content"]] == ["thinking"] and whole["stop_reason"] == "max_tokens"
