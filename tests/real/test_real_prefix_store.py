"""A prefix kept across unloads and restarts (`gateway.prefix_store`), through the real gateway and
SmolLM2: the KV cells of a ~2,000-token system prompt are written when the model unloads (admin
unload; SIGTERM, the store emptied first), and a later request that shares it gets them back from
disk. That the restored cells are the saved ones, bit for bit, with the answer the prefix kept in
memory gives, is test_real_prefix_state.py's (in process, where the batches can be laid out alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from tests.real.conftest import model
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, GatewayServer

ADMIN = "test-admin-key"
SYSTEM = "\n".join(
    f"- tool_{i}(path: string, limit: integer = {i}): reads the item at path and returns at most limit entries."
    for i in range(80)
)
QUESTION_A = "Which tool would you use first? Answer briefly."
QUESTION_B = "Name one tool that reads items. Answer briefly."


def config(store: Path) -> dict[str, Any]:
    return {
        "gateway": {
            "memory_budget": "2GiB",
            "admin_key": ADMIN,
            "prefix_store": {"path": str(store), "max_bytes": "1GiB"},
        },
        "models": {"smollm2": model(SMOLLM, model={"n_ctx": 4096})},
    }


def ask(server: GatewayServer, question: str) -> tuple[str, int]:
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN, max_retries=0, timeout=CLIENT_TIMEOUT)
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=16,
        temperature=0,
    )
    assert reply.usage is not None
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


def restored(server: GatewayServer) -> tuple[float, float]:
    """Prefixes and tokens the model's current worker loaded from the store."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=CLIENT_TIMEOUT).text

    def value(name: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(f'{name}{{model="smollm2"}} ')), None)
        return float(line.split()[-1]) if line else 0.0

    return value("gateway_prefix_store_restored_total"), value("gateway_prefix_store_restored_tokens_total")


def test_a_shared_prefix_outlives_an_unload_and_a_restart(fresh_server: Any, tmp_path: Path) -> None:
    store = tmp_path / "prefixes"
    server = fresh_server(config(store))
    _, prompt_tokens = ask(server, QUESTION_A)
    assert prompt_tokens > 1500
    assert not list(store.glob("*.kv"))
    assert restored(server) == (0.0, 0.0)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    unload = httpx.post(f"{server.base_url}/admin/models/smollm2/unload", headers=headers, timeout=CLIENT_TIMEOUT)
    unload.raise_for_status()
    assert len(list(store.glob("*.kv"))) == 1  # written by the worker before it exited
    answer, _ = ask(server, QUESTION_B)  # loads the model again: the system prompt's cells come from disk
    count, tokens = restored(server)
    assert count == 1 and tokens > 1500
    assert answer.strip()
    for path in store.glob("*.kv"):
        path.unlink()
    server.stop()  # SIGTERM: the worker saves what it holds (B's prompt and answer) before it exits
    assert len(list(store.glob("*.kv"))) == 1
    again = fresh_server(config(store))
    answer, _ = ask(again, QUESTION_A)
    count, tokens = restored(again)
    assert count == 1 and tokens > 1500
    assert answer.strip()
    assert "Traceback" not in again.log()
