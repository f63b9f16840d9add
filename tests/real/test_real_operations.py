"""Operations on the real server: metrics, keys, reload under load, access logs, admin."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.real.conftest import model, standard_config
from tests.real.server import CLIENT_TIMEOUT, GEMMA, SMOLLM, SMOLLM_Q8, GatewayServer, wait_for

pytestmark = pytest.mark.real

SECRET = "zebra-quokka-marmalade"
HELLO = [{"role": "user", "content": f"Say hello to {SECRET}."}]
LONG = [{"role": "user", "content": "Repeat the word 'apple' 500 times."}]
USER_KEY = "user-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"


def secured_config() -> dict[str, Any]:
    config = standard_config()
    config["gateway"].update(
        {
            "api_keys": [
                {"id": "user", "key": "${TEST_USER_KEY}", "models": ["smollm2", "smollm2-q8"]},
                {"id": "limited", "key": "limited-key-0123456", "rpm": 1},
            ],
            "admin_key": "${TEST_ADMIN_KEY}",
            "cors_origins": ["https://chat.example"],
            "max_body_bytes": "64KiB",
        }
    )
    config["models"]["gemma"]["pinned"] = True
    return config


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = GatewayServer(
        secured_config(), tmp_path_factory.mktemp("secured"), {"TEST_USER_KEY": USER_KEY, "TEST_ADMIN_KEY": ADMIN_KEY}
    )
    yield server
    server.stop()


def sdk(server: GatewayServer, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT)


def samples(server: GatewayServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=CLIENT_TIMEOUT).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_auth_matrix_on_the_real_server(secured: GatewayServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(secured, "wrong-key").chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    reply = sdk(secured, USER_KEY).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    assert reply.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError):
        sdk(secured, USER_KEY).chat.completions.create(model="gemma", messages=HELLO, max_tokens=2)
    assert {m.id for m in sdk(secured, USER_KEY).models.list().data} == {"smollm2", "smollm2-q8"}
    limited = sdk(secured, "limited-key-0123456")
    limited.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as info:
        limited.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    assert int(info.value.response.headers["retry-after"]) > 0
    admin = httpx.get(f"{secured.base_url}/admin/models", headers={"x-api-key": ADMIN_KEY}, timeout=CLIENT_TIMEOUT)
    assert admin.status_code == 200
    assert (
        httpx.get(
            f"{secured.base_url}/admin/models", headers={"x-api-key": USER_KEY}, timeout=CLIENT_TIMEOUT
        ).status_code
        == 401
    )


def test_metrics_move_on_the_real_server(secured: GatewayServer) -> None:
    before = samples(secured)
    ok = ("gateway_requests_total", (("endpoint", "/v1/chat/completions"), ("model", "smollm2-q8"), ("status", "200")))
    tokens = ("gateway_completion_tokens_total", (("model", "smollm2-q8"),))
    stream = sdk(secured, USER_KEY).chat.completions.create(
        model="smollm2-q8", messages=LONG, max_tokens=12, stream=True, temperature=0
    )
    assert sum(1 for _ in stream) > 0
    after = samples(secured)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[tokens] == before.get(tokens, 0) + 12
    assert after[("gateway_model_loaded", (("model", "smollm2-q8"),))] == 1
    assert after[("gateway_model_loads_total", (("model", "smollm2-q8"), ("outcome", "ok")))] >= 1
    assert after[("gateway_model_measured_bytes", (("model", "smollm2-q8"),))] > 100 * 2**20
    assert after[("gateway_time_to_first_token_seconds_count", (("model", "smollm2-q8"),))] >= 1
    assert after[("gateway_tokens_per_second_count", (("model", "smollm2-q8"),))] >= 1
    assert after[("gateway_memory_budget_bytes", ())] == 2 * 2**30


def test_access_log_is_json_without_prompt_text(secured: GatewayServer) -> None:
    client = httpx.Client(
        base_url=secured.base_url, headers={"authorization": f"Bearer {USER_KEY}"}, timeout=CLIENT_TIMEOUT
    )
    response = client.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": HELLO, "max_tokens": 4},
        headers={"x-request-id": "trace-42"},
    )
    assert response.headers["x-request-id"] == "trace-42"
    # The line is written once the response has ended, which the client may see first.
    assert wait_for(lambda: '"request_id": "trace-42"' in secured.log())
    log = secured.log()
    assert SECRET not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"ts"')]
    (line,) = [entry for entry in lines if entry["request_id"] == "trace-42"]
    assert line["key_id"] == "user" and line["model"] == "smollm2" and line["status"] == 200
    assert line["completion_tokens"] == 4 and line["prompt_tokens"] > 0
    assert line["ttft_ms"] > 0 and line["duration_ms"] >= line["ttft_ms"]


def test_reload_applies_a_diff_while_a_stream_runs(fresh_server: Any) -> None:
    config = standard_config()
    server = fresh_server(config)
    client = sdk(server)
    client.chat.completions.create(model="smollm2-q8", messages=HELLO, max_tokens=2)  # loaded, will change
    result: dict[str, Any] = {}
    started = threading.Event()

    def stream() -> None:
        chunks = []
        for chunk in client.chat.completions.create(
            model="smollm2",
            messages=LONG,
            max_tokens=300,
            stream=True,
            temperature=0,
            stream_options={"include_usage": True},
        ):
            chunks.append(chunk)
            started.set()
        result["chunks"] = chunks

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(CLIENT_TIMEOUT)
    new = standard_config()
    del new["models"]["gemma"]  # removed
    new["models"]["smollm2-q8"]["model"]["n_ctx"] = 256  # changed
    new["models"]["smollm2-b"] = model(SMOLLM)  # added
    new["models"]["smollm2"]["aliases"] = ["gpt-4o"]  # renamed only: not a load setting
    server.config_path.write_text(yaml.safe_dump(new))
    server.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: set(server.statuses()) == {"smollm2", "smollm2-q8", "smollm2-b"})
    thread.join(CLIENT_TIMEOUT)
    chunks = result["chunks"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 300  # uninterrupted
    assert server.statuses()["smollm2"] == "loaded"  # unchanged but for its aliases: still loaded
    assert client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2).model == "smollm2"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=2)
    # The changed model reloads with its new context size on its next request.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2-q8", messages=[{"role": "user", "content": "word " * 300}])
    assert "256" in info.value.message
    assert client.chat.completions.create(model="smollm2-b", messages=HELLO, max_tokens=2).model == "smollm2-b"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gemma", messages=HELLO, max_tokens=2)


def test_invalid_reload_keeps_the_running_configuration(fresh_server: Any) -> None:
    server = fresh_server(standard_config())
    server.config_path.write_text(
        "models:\n  broken:\n    model: {path: missing.gguf}\n    sampling: {temprature: 1}\n"
    )
    response = httpx.post(f"{server.base_url}/admin/reload", timeout=CLIENT_TIMEOUT)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "models.broken.sampling.temprature: unknown key" in message
    assert set(server.statuses()) == {"smollm2", "smollm2-q8", "gemma"}
    assert sdk(server).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2).choices
    server.process.send_signal(signal.SIGHUP)  # the same invalid file by signal: still running, still serving
    assert wait_for(lambda: server.log().count("configuration not reloaded") == 2)  # the endpoint's, the signal's
    assert server.process.poll() is None
    assert set(server.statuses()) == {"smollm2", "smollm2-q8", "gemma"}


def test_admin_unload_waits_for_the_stream(fresh_server: Any) -> None:
    server = fresh_server(standard_config())
    client = sdk(server)
    stream = client.chat.completions.create(model="smollm2", messages=LONG, max_tokens=200, stream=True, temperature=0)
    next(stream)
    admin = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    listing = {m["id"]: m for m in admin.get("/admin/models").json()["models"]}
    assert listing["smollm2"]["leases"] == 1 and listing["smollm2"]["in_flight"] == 1
    unloading = threading.Thread(target=lambda: admin.post("/admin/models/smollm2/unload"))
    unloading.start()
    rest = list(stream)
    unloading.join(CLIENT_TIMEOUT)
    assert [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason] == ["length"]
    assert server.statuses()["smollm2"] == "unloaded"
    assert admin.post("/admin/models/gemma/load").json()["state"] == "loaded"
    assert server.statuses()["gemma"] == "loaded"


def test_gateway_check(tmp_path: Any) -> None:
    import subprocess
    import sys

    config = standard_config()
    config["gateway"]["memory_budget"] = "700MiB"
    config["models"]["gpu"] = model(SMOLLM_Q8, model={"n_gpu_layers": -1})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "memory budget: 700.0 MiB" in out
    assert "backend: CPU" in out
    assert "smollm2:" in out and "llama" in out and "Q4_1" in out and "GGUF template" in out
    assert "gemma:" in out and "gemma3" in out and "chat_format gemma" in out
    assert "warning: gpu asks for GPU offload" in out
    assert "fit together" in out
    too_small = dict(config, gateway={"memory_budget": "100MiB"})
    path.write_text(yaml.safe_dump(too_small))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 1
    assert "can never fit" in result.stdout


def test_gateway_check_measure(tmp_path: Any) -> None:
    """Each model loaded once in a real worker and given its longest input (a full batch; an embedding
    model's whole context): the estimate's error per pool at that peak, within 10% and not below."""
    import re
    import subprocess
    import sys

    config = {
        "gateway": {"memory_budget": "2GiB", "spare_workers": 0},
        "models": {
            "smollm2": model(SMOLLM),
            "gemma": model(GEMMA, model={"chat_format": "gemma"}),
            "embed": model(SMOLLM, embedding=True, model={"n_ctx": 512, "pooling": "mean"}),
        },
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path), "--measure"],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    errors = {
        m: float(e)
        for m, e in re.findall(r"^  (\S+) on host: estimate .*, measured .* \(([-+][\d.]+)%\)$", result.stdout, re.M)
    }
    assert set(errors) == {"smollm2", "gemma", "embed"}, result.stdout
    assert all(0 <= error <= 10 for error in errors.values()), errors


def test_health_ready_cors_and_body_limit(secured: GatewayServer) -> None:
    base = secured.base_url
    assert httpx.get(f"{base}/health", timeout=CLIENT_TIMEOUT).json() == {"status": "ok"}
    assert wait_for(
        lambda: httpx.get(f"{base}/health/ready", timeout=CLIENT_TIMEOUT).status_code == 200
    )  # the pinned model loads at start
    assert httpx.get(f"{base}/health/ready", timeout=CLIENT_TIMEOUT).json() == {"status": "ready"}
    models = httpx.get(f"{base}/admin/models", headers={"x-api-key": ADMIN_KEY}, timeout=CLIENT_TIMEOUT).json()[
        "models"
    ]
    assert {m["id"]: m["state"] for m in models}["gemma"] == "loaded"
    preflight = {
        "origin": "https://chat.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    allowed = httpx.options(f"{base}/v1/chat/completions", headers=preflight, timeout=CLIENT_TIMEOUT)
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
    denied = httpx.options(
        f"{base}/v1/chat/completions", headers={**preflight, "origin": "https://other.example"}, timeout=CLIENT_TIMEOUT
    )
    assert "access-control-allow-origin" not in denied.headers
    big = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = httpx.post(
        f"{base}/v1/chat/completions", json=big, headers={"authorization": f"Bearer {USER_KEY}"}, timeout=CLIENT_TIMEOUT
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
