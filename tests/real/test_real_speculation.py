"""Speculative decoding on real llama.cpp (SmolLM2 Q4_1, its Q8_0 as the draft model): greedy output
is token for token the plain one, with n-gram drafts and with a draft model; a JSON schema still holds;
/metrics counts drafted and accepted tokens; a draft model with another vocabulary is refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, GEMMA, SMOLLM, SMOLLM_Q8, GatewayServer

PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank"]
DOCUMENT = (
    "[\n"
    + ",\n".join(
        json.dumps({"id": i, "name": name, "age": 20 + 3 * i, "email": f"{name.lower()}@example.com"})
        for i, name in enumerate(PEOPLE)
    )
    + "\n]"
)
# An edit: the answer copies most of its prompt (primed with the array's opening, as SmolLM2-135M
# then copies it line by line).
EDIT = (
    "<|im_start|>user\nHere is a JSON document:\n" + DOCUMENT + "\nOutput the full JSON array, changing only "
    "Bob's age to 40.<|im_end|>\n<|im_start|>assistant\n```json\n[\n"
)
NGRAM = {"ngram": {"min": 2, "max": 8, "lookahead": 16}}
DRAFT = {"draft": {"path": str(SMOLLM_Q8), "max_tokens": 6}}
MODELS = ("plain", "ngram", "draft")


# One thread: with more, llama.cpp's CPU flash attention sums a lone row's attention in another order
# than a batch of rows once the context passes a few hundred tokens (logits up to ~1 apart), so plain
# greedy decoding itself depends on how many rows share a step (one stream or eight); with one thread
# a row's logits are the same in any batch, and speculation's output must then be the plain one exactly.
ONE_THREAD = {"thread_count": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    models = {
        "plain": model(SMOLLM, model={"n_ctx": 1024}, runtime=ONE_THREAD),
        "ngram": model(SMOLLM, model={"n_ctx": 1024, "speculative": NGRAM}, runtime=ONE_THREAD),
        "draft": model(SMOLLM, model={"n_ctx": 1024, "speculative": DRAFT}, runtime=ONE_THREAD),
    }
    gateway = GatewayServer({"gateway": {"memory_budget": "3GiB"}, "models": models}, tmp_path_factory.mktemp("spec"))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def complete(client: OpenAI, name: str, prompt: str, **extra: Any) -> tuple[str, Any]:
    """Greedy, seeded: a seeded request evaluates its whole prompt on a cleared pool, so its logits do
    not depend on which cached prefix earlier requests left (a reused prefix moves them slightly)."""
    answer = client.completions.create(
        model=name, prompt=prompt, max_tokens=120, temperature=0, logprobs=1, seed=1, **extra
    )
    return answer.choices[0].text, answer.choices[0].logprobs.tokens


def test_greedy_output_is_token_for_token_the_plain_one(client: OpenAI) -> None:
    plain = complete(client, "plain", EDIT)
    assert '"Carol"' in plain[0]  # the answer copies the document: drafts have something to find
    for name in ("ngram", "draft"):
        assert complete(client, name, EDIT) == plain, name
    chat = "<|im_start|>user\nTell me about the history of bicycles.<|im_end|>\n<|im_start|>assistant\n"
    plain_chat = complete(client, "plain", chat)
    for name in ("ngram", "draft"):
        assert complete(client, name, chat) == plain_chat, name


def test_a_json_schema_holds_and_matches_the_plain_answer(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                    "additionalProperties": False,
                },
                "maxItems": 6,
            }
        },
        "required": ["people"],
        "additionalProperties": False,
    }
    answers = {}
    for name in MODELS:
        chat = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": f"List each person's name and age as JSON:\n{DOCUMENT}"}],
            max_tokens=200,
            temperature=0,
            seed=1,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}},
        )
        answers[name] = chat.choices[0].message.content or ""
        people = json.loads(answers[name])["people"]
        assert all(set(p) == {"name", "age"} for p in people)
    assert answers["ngram"] == answers["plain"] == answers["draft"]


def test_metrics_count_drafted_and_accepted_tokens(client: OpenAI, server: GatewayServer) -> None:
    complete(client, "ngram", EDIT)
    complete(client, "draft", EDIT)
    text = httpx.get(f"{server.base_url}/metrics", timeout=CLIENT_TIMEOUT).text

    def value(metric: str, name: str) -> float:
        found = re.search(rf'^{metric}{{model="{name}"}} ([\d.e+]+)$', text, re.M)
        assert found, (metric, name)
        return float(found.group(1))

    for name in ("ngram", "draft"):
        drafted = value("gateway_speculative_drafted_tokens_total", name)
        accepted = value("gateway_speculative_accepted_tokens_total", name)
        assert 0 < accepted <= drafted, name
        assert value("gateway_speculative_acceptance_ratio", name) == pytest.approx(accepted / drafted)
    assert value("gateway_speculative_drafted_tokens_total", "plain") == 0


def test_a_draft_model_must_have_the_models_vocabulary() -> None:
    import llama_cpp
    from llama_cpp import _internals

    from gateway.engine.worker.draft import VocabularyMismatch, check_vocabulary

    def vocab_of(path: Any) -> Any:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        return _internals.LlamaModel(path_model=str(path), params=params, verbose=False)

    smollm, smollm_q8, gemma = vocab_of(SMOLLM), vocab_of(SMOLLM_Q8), vocab_of(GEMMA)
    check_vocabulary(llama_cpp, smollm.vocab, smollm_q8.vocab)  # another quantization: the same tokens
    with pytest.raises(VocabularyMismatch, match="tokens"):
        check_vocabulary(llama_cpp, smollm.vocab, gemma.vocab)
