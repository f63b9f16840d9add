"""Nothing is lost under a mixed load: several clients send every kind of request to models that do
not all fit the budget (so loads evict), cut streams short, and an operator unloads models, some by
force. Every answer is a success or an error that says why (a forced unload's `model_unloaded`);
no 5xx otherwise, no 400 for a valid request, no stream left without its end; afterwards nothing is
held, the gateway logged no error, and every model serves again."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from typing import Any

import httpx

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, GEMMA, SMOLLM, SMOLLM_Q8, GatewayServer
from tests.real.test_real_api import PARIS, TOOLS

CLIENTS = 6
REQUESTS_EACH = 12
MODELS = ["smollm2", "smollm2", "smollm2-q8", "gemma"]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ASKS = ["Hello!", "Tell me a story about a cat.", "What is 2+2?", "Name three colors."]


def config() -> dict[str, Any]:
    queue = {"max_queue": 32}
    return {
        # Room for two of the three chat models at a time: loads evict all along.
        "gateway": {"memory_budget": "900MiB", "room_wait": CLIENT_TIMEOUT, "spare_workers": 1},
        "models": {
            # The shipped models.yaml's sampling defaults: penalised sequences batched with the others.
            "smollm2": model(SMOLLM, runtime={"parallel": 4}, sampling={"repeat_penalty": 1.1}, **queue),
            "smollm2-q8": model(SMOLLM_Q8, runtime={"parallel": 2}, **queue),
            "gemma": model(GEMMA, model={"chat_format": "gemma"}, **queue),
            "embed": model(SMOLLM, embedding=True, model={"pooling": "mean"}, **queue),
        },
    }


class Client:
    def __init__(self, base: str, seed: int) -> None:
        self.base, self.rng = base, random.Random(seed)
        self.http = httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT)
        self.outcomes: Counter[tuple[str, int | str]] = Counter()
        self.wrong: list[str] = []

    def check(self, kind: str, response: httpx.Response) -> None:
        self.outcomes[kind, response.status_code] += 1
        if response.status_code != 200 and not self.unloaded(response.text):
            self.wrong.append(f"{kind} {response.status_code}: {response.text[:300]}")

    @staticmethod
    def unloaded(text: str) -> bool:
        """The error an operator's forced unload gives (OpenAI or Anthropic shape)."""
        return "was unloaded (admin)" in text

    def run(self) -> None:
        with self.http:
            for _ in range(REQUESTS_EACH):
                self.one(self.rng.choice(MODELS))

    def one(self, name: str) -> None:
        rng = self.rng
        chat = {"model": name, "messages": [{"role": "user", "content": rng.choice(ASKS)}]}
        kind = rng.choice(["chat", "stream", "cut", "tools", "schema", "n", "messages", "responses", "embed", "admin"])
        if kind == "chat":
            self.check(kind, self.http.post("/v1/chat/completions", json={**chat, "max_tokens": rng.randint(1, 40)}))
        elif kind in ("stream", "cut"):
            self.stream(kind, {**chat, "max_tokens": 60, "stream": True, "stream_options": {"include_usage": True}})
        elif kind == "tools":
            choice = rng.choice(["auto", "required"])
            body = {"model": name, "messages": PARIS, "tools": TOOLS, "tool_choice": choice, "max_tokens": 80}
            self.check(kind, self.http.post("/v1/chat/completions", json=body))
        elif kind == "schema":
            fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
            response = self.http.post("/v1/chat/completions", json={**chat, "max_tokens": 80, "response_format": fmt})
            self.check(kind, response)
            if response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "stop":
                json.loads(response.json()["choices"][0]["message"]["content"])
        elif kind == "n":
            body = {**chat, "max_tokens": 20, "n": 2, "logprobs": True, "top_logprobs": 2}
            self.check(kind, self.http.post("/v1/chat/completions", json=body))
        elif kind == "messages":
            body = {**chat, "max_tokens": 20, "stream": rng.random() < 0.5}
            self.check(kind, self.http.post("/v1/messages", json=body))
        elif kind == "responses":
            body = {"model": name, "input": rng.choice(ASKS), "max_output_tokens": 20, "stream": rng.random() < 0.5}
            self.check(kind, self.http.post("/v1/responses", json=body))
        elif kind == "embed":
            body = {"model": "embed", "input": ["a b c"] * rng.randint(1, 4)}
            self.check(kind, self.http.post("/v1/embeddings", json=body))
        else:
            force = {"force": "true"} if rng.random() < 0.4 else None
            self.check(kind, self.http.post(f"/admin/models/{name}/unload", params=force))

    def stream(self, kind: str, body: dict[str, Any]) -> None:
        cut_after = self.rng.randint(1, 10) if kind == "cut" else None
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                self.check(kind, response)
                return
            payloads = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payloads.append(line[6:])
                    if cut_after is not None and len(payloads) >= cut_after:
                        break  # the client goes away
        self.outcomes[kind, 200] += 1
        if cut_after is None:
            ended = payloads[-1:] == ["[DONE]"]
            error = next((p for p in payloads if p.startswith('{"error"')), None)
            if not ended or (error is not None and not self.unloaded(error)):
                self.wrong.append(f"stream without its end: {payloads[-2:]}")


def test_nothing_is_lost_under_a_mixed_load(fresh_server: Any) -> None:
    server: GatewayServer = fresh_server(config())
    clients = [Client(server.base_url, seed) for seed in range(CLIENTS)]
    threads = [threading.Thread(target=c.run) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sum((c.outcomes for c in clients), Counter())
    assert [w for c in clients for w in c.wrong] == [], outcomes
    assert sum(outcomes.values()) == CLIENTS * REQUESTS_EACH
    models = httpx.get(f"{server.base_url}/admin/models", timeout=CLIENT_TIMEOUT).json()["models"]
    assert all(m["leases"] == 0 and m["queued"] == 0 for m in models), models
    for name in ("smollm2", "smollm2-q8", "gemma"):
        body = {"model": name, "messages": PARIS, "max_tokens": 3}
        reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT)
        assert reply.status_code == 200, reply.text
    assert " ERROR " not in server.log() and "Traceback" not in server.log()
