"""API breadth on the real server: structured output, text completions, tokenizer helpers, refusals."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.real.conftest import model, standard_config
from tests.real.server import CLIENT_TIMEOUT, GEMMA, SMOLLM, GatewayServer

pytestmark = pytest.mark.real

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "skills", "address"],
    # Closed: with an open object SmolLM2 adds keys until max_tokens cuts the JSON (17 of 40 seeds with the
    # model's grammar_schema at its default temperature, 12 of 40 streamed), as JSON Schema allows.
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Invent a user profile."}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = standard_config()
    config["models"]["smollm2-json"] = model(SMOLLM, output={"grammar_schema": PERSON})
    config["models"]["gemma-base"] = model(GEMMA)  # no chat template, no chat_format: text completions only
    config["models"]["smollm2-embed"] = model(SMOLLM, embedding=True, model={"pooling": "mean"})
    server = GatewayServer(config, tmp_path_factory.mktemp("api"))
    yield server
    server.stop()


def sdk(server: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def test_json_schema_outputs_always_validate(api: GatewayServer) -> None:
    client = sdk(api)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(6):
        reply = client.chat.completions.create(
            model="smollm2",
            messages=ASK,
            response_format=fmt,
            max_tokens=300,
            temperature=0.9,
            seed=seed,  # type: ignore[arg-type]
        )
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PERSON)


def test_json_schema_streamed(api: GatewayServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    stream = sdk(api).chat.completions.create(
        model="smollm2",
        messages=ASK,
        response_format=fmt,
        max_tokens=300,
        stream=True,
        seed=3,  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_model_default_grammar_schema(api: GatewayServer) -> None:
    reply = sdk(api).chat.completions.create(model="smollm2-json", messages=ASK, max_tokens=300, seed=1)
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PERSON)


def test_json_object(api: GatewayServer) -> None:
    reply = sdk(api).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and age for Bob, 30."}],
        response_format={"type": "json_object"},
        max_tokens=300,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_schema_the_grammar_cannot_express_is_400(api: GatewayServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "odd", "schema": {"type": "frobnicate"}}}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            result = sdk(api).chat.completions.create(
                model="smollm2",
                messages=ASK,
                response_format=fmt,
                stream=stream,  # type: ignore[call-overload]
            )
            list(result) if stream else None
        assert info.value.param == "response_format.json_schema.schema"


def test_text_completions(api: GatewayServer) -> None:
    client = sdk(api)
    completion = client.completions.create(
        model="gemma-base",
        prompt=["The capital of France is", "Two plus two is"],
        max_tokens=6,
        temperature=0,
        echo=True,
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].text.startswith("The capital of France is")
    assert completion.choices[1].text.startswith("Two plus two is")
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    with pytest.raises(openai.BadRequestError) as info:  # a base model without a template: no chat
        client.chat.completions.create(model="gemma-base", messages=ASK)
    assert info.value.code == "chat_template_missing"
    chunks = list(
        client.completions.create(
            model="smollm2",
            prompt="Once upon a time",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smollm2", prompt="x" * 5000)
    assert info.value.code == "context_length_exceeded"


def test_tokenizer_helpers_round_trip(api: GatewayServer) -> None:
    text = "Hello, tokenizer!"
    tokens = httpx.post(
        f"{api.base_url}/extras/tokenize", json={"model": "smollm2", "input": text}, timeout=CLIENT_TIMEOUT
    ).json()
    assert tokens["count"] == len(tokens["tokens"]) > 2
    back = httpx.post(
        f"{api.base_url}/extras/detokenize",
        json={"model": "smollm2", "tokens": tokens["tokens"]},
        timeout=CLIENT_TIMEOUT,
    )
    assert back.json()["text"] == text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 17}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"one": 1}}, "logit_bias"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_unsupported_fields_are_refused_by_name(api: GatewayServer, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(api).chat.completions.create(model="smollm2", messages=ASK, max_tokens=2, **extra)
    assert info.value.param == param


def test_n_choices_streamed_and_accumulated_by_the_sdk(api: GatewayServer) -> None:
    client = sdk(api)
    # The helper refuses answers cut by max_tokens, so each choice ends at a stop sequence.
    args: dict[str, Any] = {"messages": ASK, "n": 3, "max_tokens": 60, "seed": 11, "temperature": 1.0, "stop": [" "]}
    with client.chat.completions.stream(model="smollm2", **args) as stream:
        final = stream.get_final_completion()
    assert [c.index for c in final.choices] == [0, 1, 2]
    assert all(c.message.content and c.finish_reason == "stop" for c in final.choices)
    again = client.chat.completions.create(model="smollm2", **args)
    assert [c.message.content for c in again.choices] == [c.message.content for c in final.choices]
    assert len({c.message.content for c in again.choices}) > 1  # each choice samples on its own
    # Decoded together: the stream interleaves the choices by index.
    stream = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        n=2,
        max_tokens=24,
        stream=True,
        temperature=0,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    order = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert order[:6] == [0, 1, 0, 1, 0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 48


def test_logprobs_shapes(api: GatewayServer) -> None:
    reply = sdk(api).chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=6, logprobs=True, top_logprobs=4, temperature=0
    )
    content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
    assert content is not None and len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 4
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs))
    completion = sdk(api).completions.create(model="smollm2", prompt="The sky is", max_tokens=3, logprobs=2)
    legacy = completion.choices[0].logprobs
    assert legacy is not None and legacy.tokens and len(legacy.tokens) == 3
    assert legacy.top_logprobs is not None and all(len(alts) <= 2 for alts in legacy.top_logprobs)


def test_logit_bias_steers_sampling(api: GatewayServer) -> None:
    tokens = httpx.post(
        f"{api.base_url}/extras/tokenize", json={"model": "smollm2", "input": " banana"}, timeout=CLIENT_TIMEOUT
    ).json()
    (banana,) = tokens["tokens"]
    reply = sdk(api).chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=3, temperature=0, logit_bias={str(banana): 100}
    )
    assert reply.choices[0].message.content == " banana banana banana"
    with pytest.raises(openai.BadRequestError) as info:
        sdk(api).chat.completions.create(model="smollm2", messages=ASK, logit_bias={"99999999": 1})
    assert info.value.param == "logit_bias"


def test_embeddings_from_a_real_model(api: GatewayServer) -> None:
    client = sdk(api)
    texts = ["The cat sat on the mat.", "The cat sat on the mat.", "Quarterly revenue grew by four percent."]
    result = client.embeddings.create(model="smollm2-embed", input=texts)  # the SDK asks for base64
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(len(v) == 576 for v in vectors)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)  # unit length
    # Not bit-identical: llama.cpp sums floats in an order that depends on where a sequence sits in the
    # batch (SIMD lanes over its KV cells and over the pooling matmul) and, on some CPUs and every GPU,
    # on kernels picked by batch size. Measured here: at most 3e-8 between the same text alone and in a
    # batch; a different kernel adds float32 rounding per layer. 1e-4 on unit vectors is far below
    # what separates two different texts (cosine < 0.999 below).
    assert vectors[0] == pytest.approx(vectors[1], abs=1e-4)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[2]) < 0.999
    assert result.usage.prompt_tokens > 10
    floats = client.embeddings.create(model="smollm2-embed", input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-4)  # alone vs in a batch: as above
    tokens = httpx.post(
        f"{api.base_url}/extras/tokenize", json={"model": "smollm2-embed", "input": texts[0]}, timeout=CLIENT_TIMEOUT
    ).json()
    by_tokens = client.embeddings.create(model="smollm2-embed", input=[tokens["tokens"]], encoding_format="float")
    assert by_tokens.usage.prompt_tokens == tokens["count"]
    assert len(by_tokens.data[0].embedding) == 576
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2-embed", input="word " * 600)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2", input="x")
    assert info.value.param == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2-embed", input="x", dimensions=128)
    assert info.value.param == "dimensions"


# Closed (additionalProperties: false): an open schema lets a temperature-1 sample add keys until
# max_tokens, which JSON Schema allows and the grammar rightly permits.
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
# Closed schemas: with an open one, SmolLM2 at temperature 1 invents extra keys until max_tokens cuts the
# arguments (6 of 60 seeds did), which is the model's choice, not the gateway's. Bounded integers: a
# "number" may have any count of digits, and a sample can repeat one until max_tokens (1 of 40 seeds).
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": -9999, "maximum": 9999},
        "b": {"type": "integer", "minimum": -9999, "maximum": 9999},
    },
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD}},
]
PARIS = [{"role": "user", "content": "What's the weather in Paris?"}]
ARGS = '{"city": "Paris", "unit": "c"}'


def test_named_tool_call_arguments_always_parse(api: GatewayServer) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(4):
        reply = sdk(api).chat.completions.create(
            model="smollm2", messages=PARIS, tools=TOOLS, tool_choice=choice, max_tokens=120, seed=seed, temperature=1
        )
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.content is None
        (call,) = reply.choices[0].message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_required_tool_call_streamed_through_the_sdk_helper(api: GatewayServer) -> None:
    with sdk(api).chat.completions.stream(
        model="smollm2",
        messages=[{"role": "user", "content": "What is 2 plus 3?"}],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    schema = {"get_weather": WEATHER, "add": ADD}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    # The deltas follow OpenAI's rules: id, type and name only in the first delta of the call.
    raw = sdk(api).chat.completions.create(
        model="smollm2", messages=PARIS, tools=TOOLS, tool_choice="required", max_tokens=120, stream=True, seed=2
    )
    deltas = [d for c in raw if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function and deltas[0].function.name
    assert all(d.id is None and d.type is None and d.function and d.function.name is None for d in deltas[1:])
    json.loads("".join(d.function.arguments or "" for d in deltas if d.function))


def test_auto_and_tool_results(api: GatewayServer) -> None:
    client = sdk(api)
    auto = client.chat.completions.create(model="smollm2", messages=PARIS, tools=TOOLS, max_tokens=40)
    message = auto.choices[0].message
    if message.tool_calls:  # whatever the model chose, the answer is well formed
        assert auto.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            json.loads(call.function.arguments)
    else:
        assert message.content and auto.choices[0].finish_reason in ("stop", "length")
    follow_up: list[Any] = [
        *PARIS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]
    reply = client.chat.completions.create(
        model="smollm2", messages=follow_up, tools=TOOLS, tool_choice="none", max_tokens=20
    )
    assert reply.choices[0].message.content and reply.choices[0].message.tool_calls is None


def test_real_responses_match_the_official_schema(api: GatewayServer) -> None:
    from tests import wire

    base = api.base_url
    chat = {"model": "smollm2", "messages": ASK, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    wire.chat_completion(httpx.post(f"{base}/v1/chat/completions", json=chat, timeout=CLIENT_TIMEOUT).json())
    chunks = 0
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json={**chat, "stream": True}, timeout=CLIENT_TIMEOUT
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                wire.chat_chunk(json.loads(line[6:]))
                chunks += 1
    assert chunks > 1
    text = {"model": "gemma-base", "prompt": "Hello", "max_tokens": 4}
    wire.completion(httpx.post(f"{base}/v1/completions", json=text, timeout=CLIENT_TIMEOUT).json())
    embed = {"model": "smollm2-embed", "input": "Hello", "encoding_format": "float"}
    wire.embeddings(httpx.post(f"{base}/v1/embeddings", json=embed, timeout=CLIENT_TIMEOUT).json())
    wire.model_list(httpx.get(f"{base}/v1/models", timeout=CLIENT_TIMEOUT).json())
