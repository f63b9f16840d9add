"""The real server with real llama.cpp models, driven by the openai SDK."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.real.server import CLIENT_TIMEOUT, GatewayServer

pytestmark = pytest.mark.real

COUNT = [{"role": "user", "content": "Count from 1 to 50, separated by commas."}]
HELLO = [{"role": "user", "content": "Say hello."}]


def stream_chunks(client: OpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    return list(client.chat.completions.create(stream=True, **kwargs))


def raw_stream(base_url: str, body: dict[str, Any]) -> tuple[int, list[str]]:
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        return response.status_code, payloads


def test_non_streaming(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, max_tokens=16)
    completion = ChatCompletion.model_validate(json.loads(raw.text))
    assert completion.model == "smollm2"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 16
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_streaming_with_usage(client: OpenAI, server: GatewayServer) -> None:
    chunks = stream_chunks(
        client, model="smollm2", messages=COUNT, max_tokens=12, stream_options={"include_usage": True}
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12 or finishes == ["stop"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    status, payloads = raw_stream(
        server.base_url, {"model": "smollm2", "messages": COUNT, "max_tokens": 5, "stream": True}
    )
    assert status == 200 and payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        ChatCompletionChunk.model_validate(json.loads(payload))


def test_max_tokens_and_max_completion_tokens(client: OpenAI) -> None:
    first = client.chat.completions.create(model="smollm2", messages=COUNT, max_tokens=10, temperature=0)
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 10
    second = client.chat.completions.create(model="smollm2", messages=COUNT, max_completion_tokens=7, temperature=0)
    assert second.choices[0].finish_reason == "length"
    assert second.usage is not None and second.usage.completion_tokens == 7
    # Greedy decoding: the shorter answer is a prefix of the longer one.
    assert (first.choices[0].message.content or "").startswith(second.choices[0].message.content or "")


def test_stop_sequence_cuts_output(client: OpenAI) -> None:
    full = client.chat.completions.create(model="smollm2", messages=COUNT, max_tokens=40, temperature=0)
    text = full.choices[0].message.content or ""
    assert "5" in text, text
    cut = client.chat.completions.create(model="smollm2", messages=COUNT, max_tokens=40, temperature=0, stop=["5"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index("5")]


def test_seed_makes_sampling_repeatable(client: OpenAI, server: GatewayServer) -> None:
    """Same seed, prompt and settings give the same output whatever ran before on the model, and after
    the model is unloaded and loaded again (docs/api.md, "Seeds")."""
    settings: dict[str, Any] = {"model": "smollm2", "max_tokens": 48, "temperature": 1.2, "top_p": 1}

    def sample(seed: int, messages: list[dict[str, str]] = HELLO) -> str:
        reply = client.chat.completions.create(messages=messages, seed=seed, **settings)  # type: ignore[call-overload]
        return str(reply.choices[0].message.content)

    first = sample(7)
    assert sample(7) == first  # the whole prompt is in the KV cache now
    # Other requests in between: a longer prompt sharing the template's prefix, and an unseeded one.
    sample(3, [{"role": "user", "content": "Say hello to everyone in the room, one by one."}])
    client.chat.completions.create(model="smollm2", messages=COUNT, max_tokens=30)
    assert sample(7) == first
    admin = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    assert admin.post("/admin/models/smollm2/unload").status_code == 200
    assert server.statuses()["smollm2"] == "unloaded"
    assert sample(7) == first  # a fresh worker
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1  # and the seed does change the sample


def test_penalties_run_in_the_real_sampler_chain(client: OpenAI, server: GatewayServer) -> None:
    """Repetition penalties go through llama.cpp's own penalties sampler (a wrong argument list there
    killed the worker on every penalised request): each is served, and frequency and repeat
    penalties make a greedy answer that repeats one word repeat it less."""
    apples = [{"role": "user", "content": "Repeat the word 'apple' 500 times."}]
    pids = server.worker_pids()

    def count(**penalty: Any) -> int:
        reply = client.chat.completions.create(
            model="smollm2", messages=apples, max_tokens=40, temperature=0, seed=1, **penalty
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        return (reply.choices[0].message.content or "").lower().count("apple")

    plain = count()
    assert count(frequency_penalty=1.5) < plain
    assert count(extra_body={"repeat_penalty": 1.5}) < plain
    assert count(presence_penalty=1.5) > 0
    assert set(pids) <= set(server.worker_pids())  # no worker was lost on the way


def test_named_chat_format_model(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="gemma", messages=HELLO, max_tokens=6)
    assert completion.model == "gemma"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_models_endpoint_reports_state_and_measured_memory(server: GatewayServer, client: OpenAI) -> None:
    client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    cards = {c["id"]: c for c in httpx.get(f"{server.base_url}/v1/models", timeout=CLIENT_TIMEOUT).json()["data"]}
    assert cards["smollm2"]["status"]["value"] == "loaded"
    models = client.models.list()
    assert {m.id for m in models.data} == {"smollm2", "smollm2-q8", "gemma"}
    # Measured resident memory of the worker: at least the weights it mapped.
    assert cards["smollm2"]["memory_bytes"] > 90 * 2**20


def test_errors(client: OpenAI, server: GatewayServer) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=-5)
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]
    assert bad.value.param == "messages[0].role"
    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=b"{nope", timeout=CLIENT_TIMEOUT)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "smollm2"}, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_is_400_before_streaming(client: OpenAI, stream: bool) -> None:
    long = [{"role": "user", "content": "apple " * 600}]  # n_ctx is 512
    with pytest.raises(openai.BadRequestError) as info:
        result = client.chat.completions.create(model="smollm2", messages=long, stream=stream)  # type: ignore[call-overload]
        list(result) if stream else None
    assert info.value.code == "context_length_exceeded"
    assert "512" in info.value.message


def test_six_concurrent_streams_all_complete(client: OpenAI) -> None:
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            model = ["smollm2", "smollm2-q8"][i % 2]
            chunks = stream_chunks(client, model=model, messages=COUNT, max_tokens=20)
            results[i] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT)
    assert all(len(v) == 1 for v in results.values()) and len(results) == 6, results


def test_long_stream_survives_request_for_another_model(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=COUNT,
        max_tokens=150,
        stream=True,
        temperature=0,
        stream_options={"include_usage": True},
    )
    chunks = []
    other = None
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 5:
            other = client.chat.completions.create(model="smollm2-q8", messages=HELLO, max_tokens=5)
    assert other is not None and other.choices[0].message.content is not None
    assert chunks[-1].usage is not None
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["length"], ["stop"])
    if finish == ["length"]:
        assert chunks[-1].usage.completion_tokens == 150
