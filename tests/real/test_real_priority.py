"""Priority between keys on real llama.cpp (SmolLM2 Q8_0, one slot): while a batch key's stream holds
the slot, an interactive key's stream starts at once (the batch stream is paused), and the paused
greedy answer is token for token the one it gets alone, whether its KV cells were kept or dropped and
recomputed.

One slot, because llama.cpp's float sums depend on how many rows a decode carries (a stream decoded
beside another can differ from itself alone, preempted or not); alone in the slot before and after
its pause, the batch stream is decoded exactly as its twin is."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM_Q8, GatewayServer

pytestmark = pytest.mark.real

BATCH_KEY, CHAT_KEY = "sk-batch-real-01", "sk-chat-real-001"
STORY = [{"role": "user", "content": "Describe the history of bread in detail."}]
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
BATCH_TOKENS = 60


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    config = {
        "gateway": {
            "memory_budget": "2GiB",
            "cpu_threads": 0,
            "api_keys": [{"id": "eval", "key": BATCH_KEY, "priority": "batch"}, {"id": "alice", "key": CHAT_KEY}],
        },
        # 256 cells (llama.cpp pads a pool to 256): an interactive request that may write 210 tokens does
        # not fit beside the paused stream's cells, so those are dropped and recomputed; one of 8 does.
        "models": {"smollm2": model(SMOLLM_Q8, model={"n_ctx": 256}, runtime={"parallel": 1})},
    }
    server = GatewayServer(config, tmp_path_factory.mktemp("priority"))
    yield server
    server.stop()


def client(gateway: GatewayServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT)


def counter(gateway: GatewayServer, name: str) -> float:
    match = re.search(rf'^{name}{{model="smollm2"}} (\S+)$', httpx.get(f"{gateway.base_url}/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def greedy(messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    # Seeded: the whole prompt is evaluated (no prefix reuse), so the twins evaluate the same batches.
    return {"model": "smollm2", "messages": messages, "temperature": 0, "max_tokens": max_tokens, "seed": 7}


@pytest.mark.parametrize("interactive_tokens", [8, 210], ids=["cells-kept", "cells-recomputed"])
def test_an_interactive_stream_starts_while_a_batch_stream_holds_the_slot(
    gateway: GatewayServer, interactive_tokens: int
) -> None:
    batch, chat = client(gateway, BATCH_KEY), client(gateway, CHAT_KEY)
    alone = batch.chat.completions.create(**greedy(STORY, BATCH_TOKENS)).choices[0].message.content
    preempted = counter(gateway, "gateway_preemptions_total")
    replayed = counter(gateway, "gateway_preemption_replayed_tokens_total")
    pieces: list[str] = []
    ended = 0.0
    holding = threading.Event()

    def stream() -> None:
        nonlocal ended
        for chunk in batch.chat.completions.create(**greedy(STORY, BATCH_TOKENS), stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                holding.set()
        ended = time.monotonic()

    thread = threading.Thread(target=stream)
    thread.start()
    assert holding.wait(60)  # the batch stream is decoding in the only slot
    first_token = 0.0
    for chunk in chat.chat.completions.create(**greedy(QUESTION, interactive_tokens), stream=True):
        if chunk.choices and chunk.choices[0].delta.content and not first_token:
            first_token = time.monotonic()
    thread.join(120)
    assert 0 < first_token < ended  # it did not wait for the slot to free
    assert counter(gateway, "gateway_preemptions_total") == preempted + 1
    recomputed = counter(gateway, "gateway_preemption_replayed_tokens_total") - replayed
    assert recomputed > 0 if interactive_tokens > 8 else recomputed == 0
    assert "".join(pieces) == alone  # the paused answer is the one it gets alone
