"""The configuration the README's `./scripts/serve` starts with: every model in the repository's own
models.yaml answers, with the sampling defaults written there (its repeat_penalty once made every
chat request kill its worker, and no other test used that file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openai import OpenAI

from tests.real.server import CLIENT_TIMEOUT, REPO


def shipped_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "models.yaml").read_text())
    for entry in config["models"].values():
        path = Path(entry["model"]["path"])
        entry["model"]["path"] = str(path if path.is_absolute() else REPO / path)
    return config


def test_every_model_of_the_shipped_configuration_answers(fresh_server: Any) -> None:
    config = shipped_config()
    server = fresh_server(config)
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    hello = [{"role": "user", "content": "Say hello."}]
    for name, entry in config["models"].items():
        if entry.get("embedding"):
            (vector,) = client.embeddings.create(model=name, input="hello").data
            assert len(vector.embedding) > 0
            continue
        reply = client.chat.completions.create(model=name, messages=hello, max_tokens=8)
        assert reply.choices[0].finish_reason in ("stop", "length"), name
        streamed = client.chat.completions.create(model=name, messages=hello, max_tokens=8, stream=True)
        assert [c for c in streamed if c.choices and c.choices[0].finish_reason], name
    assert "stopped unexpectedly" not in server.log()
