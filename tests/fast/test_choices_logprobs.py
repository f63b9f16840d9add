"""n choices and log probabilities over the fake llama.cpp: wire shapes and usage accounting."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakellama import ALTERNATIVE_LOGIT, BEST_LOGIT, FakeLlama
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

MSG = [{"role": "user", "content": "one two three"}]


@pytest.fixture
def client(make_config: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(make_config({"m": {}}), tmp_path)
    with TestClient(create_app(settings, spawn=FakeWorkers().spawn)) as c:
        yield c


def test_n_choices_count_the_prompt_once(client: TestClient) -> None:
    body = {"model": "m", "messages": MSG, "n": 3, "max_tokens": 2}
    completion = ChatCompletion.model_validate(client.post("/v1/chat/completions", json=body).json())
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == "tok0 tok1 " for c in completion.choices)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 6)


def test_n_choices_streamed_each_with_role_and_finish(client: TestClient) -> None:
    body = {
        "model": "m",
        "messages": MSG,
        "n": 2,
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(p)) for p in payloads[:-1]]
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role]
    finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert roles == [0, 1] and finishes == [0, 1]
    # The choices are decoded together, so their content chunks interleave by index.
    content = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == [0, 1, 0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3
    assert chunks[-1].usage.completion_tokens == 4


def test_chat_logprobs_shapes(client: TestClient) -> None:
    body = {"model": "m", "messages": MSG, "max_tokens": 2, "logprobs": True, "top_logprobs": 2}
    completion = ChatCompletion.model_validate(client.post("/v1/chat/completions", json=body).json())
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [e.token for e in logprobs.content] == ["tok0 ", "tok1 "]
    assert all(len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in logprobs.content)
    plain = ChatCompletion.model_validate(
        client.post("/v1/chat/completions", json={"model": "m", "messages": MSG, "max_tokens": 2}).json()
    )
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_streamed(client: TestClient) -> None:
    body = {"model": "m", "messages": MSG, "max_tokens": 3, "logprobs": True, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [ChatCompletionChunk.model_validate(json.loads(p)) for p in payloads[:-1]]
    tokens = [
        e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []
    ]
    assert tokens == ["tok0 ", "tok1 ", "tok2 "]


def test_completion_logprobs_legacy_shape(client: TestClient) -> None:
    body = {"model": "m", "prompt": "a b", "max_tokens": 2, "logprobs": 1, "n": 2}
    completion = Completion.model_validate(client.post("/v1/completions", json=body).json())
    assert len(completion.choices) == 2
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["tok0 ", "tok1 "]
    # The worker's log-softmax of the fake's logits: the likeliest token, one runner-up, zeros elsewhere.
    best = BEST_LOGIT - math.log(math.exp(BEST_LOGIT) + math.exp(ALTERNATIVE_LOGIT) + FakeLlama().n_vocab - 2)
    assert logprobs.token_logprobs == pytest.approx([best, best])
    assert logprobs.top_logprobs == [{"tok0 ": pytest.approx(best)}, {"tok1 ": pytest.approx(best)}]
    assert logprobs.text_offset == [0, 5]
    assert completion.usage is not None and completion.usage.prompt_tokens == 2


def test_worker_can_hold_every_choice_a_request_may_ask_for() -> None:
    from gateway.engine.sizing import MAX_SEQUENCES
    from gateway.protocol import MAX_CHOICES

    assert MAX_SEQUENCES == MAX_CHOICES  # kept apart so the worker never imports pydantic
