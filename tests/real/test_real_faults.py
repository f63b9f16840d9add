"""Budgets, crashes and shutdown on the real server, with real worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai import OpenAI

from tests.ggufgen import write_tiny_gguf
from tests.real.conftest import model, one_fits_config, standard_config
from tests.real.server import CLIENT_TIMEOUT, SMOLLM, wait_for

pytestmark = pytest.mark.real

# Greedy SmolLM2 answers this with hundreds of tokens before any end of turn.
LONG = [{"role": "user", "content": "Repeat the word 'apple' 500 times."}]
HELLO = [{"role": "user", "content": "Say hello."}]


def sdk(server: Any) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)


def test_alternating_models_under_a_budget_that_fits_one(fresh_server: Any) -> None:
    server = fresh_server(one_fits_config())
    client = sdk(server)
    for name in ["smollm2", "smollm2-q8", "smollm2", "smollm2-q8"]:
        reply = client.chat.completions.create(model=name, messages=HELLO, max_tokens=4)
        assert reply.model == name
        loaded = [m for m, state in server.statuses().items() if state == "loaded"]
        assert loaded == [name]
        assert wait_for(lambda: len(server.worker_pids()) == 1)


def test_busy_model_is_not_evicted_for_another(fresh_server: Any) -> None:
    config = one_fits_config()
    config["gateway"]["room_wait"] = 0.2  # well under the stream's length
    server = fresh_server(config)
    client = sdk(server)
    stream = client.chat.completions.create(model="smollm2", messages=LONG, max_tokens=400, stream=True, temperature=0)
    chunks = [next(stream) for _ in range(3)]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="smollm2-q8", messages=HELLO, max_tokens=4)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"]
    chunks += list(stream)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    # Once the stream is over, the other model gets the room.
    assert client.chat.completions.create(model="smollm2-q8", messages=HELLO, max_tokens=4).model == "smollm2-q8"


def kill_worker(server: Any, pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def force_unload(server: Any, pid: int) -> None:
    unload = f"{server.base_url}/admin/models/smollm2/unload?force=true"
    assert httpx.post(unload, timeout=CLIENT_TIMEOUT).json()["state"] == "unloaded"


@pytest.mark.parametrize(
    ("end_it", "code", "says"),
    [(kill_worker, "model_worker_crashed", "signal 9"), (force_unload, "model_unloaded", "unloaded (admin)")],
)
def test_a_stream_whose_worker_goes_ends_in_band(fresh_server: Any, end_it: Any, code: str, says: str) -> None:
    """A worker killed mid-stream fails only its stream, as a crash; an operator's forced unload ends
    it as an unload, not a crash. The gateway stays up and the next request starts a fresh worker."""
    server = fresh_server(one_fits_config())
    body = {"model": "smollm2", "messages": LONG, "max_tokens": 400, "stream": True, "temperature": 0}
    payloads: list[str] = []
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
                if len(payloads) == 3:
                    (pid,) = server.worker_pids()
                    end_it(server, pid)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == code and says in error["message"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert httpx.get(f"{server.base_url}/health", timeout=CLIENT_TIMEOUT).status_code == 200
    reply = sdk(server).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=4)
    assert reply.choices[0].message.content is not None
    assert server.worker_pids() not in ([], [pid])


def test_model_that_fails_to_load_does_not_hurt_others(fresh_server: Any, tmp_path: Path) -> None:
    broken = write_tiny_gguf(tmp_path / "broken.gguf")  # valid header, nothing llama.cpp can run
    config = standard_config()
    config["models"] = {"smollm2": config["models"]["smollm2"], "broken": model(broken)}
    server = fresh_server(config)
    client = sdk(server)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="broken", messages=HELLO, max_tokens=4)
    assert info.value.status_code == 503
    assert info.value.code == "model_load_failed"
    assert server.statuses()["broken"] == "failed"
    assert client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=4).choices


def test_sigterm_finishes_streams_and_leaves_no_worker(fresh_server: Any) -> None:
    config = standard_config()
    # Two spares: the stream's model takes one, and the other is still there during the stream (a
    # replacement spare waits until no model generates, so with one it would come after the stream).
    config["gateway"]["spare_workers"] = 2
    # The stream must finish, not race a grace period: a loaded machine can be many times slower.
    config["gateway"]["shutdown_grace"] = CLIENT_TIMEOUT
    server = fresh_server(config)
    client = sdk(server)
    client.chat.completions.create(model="smollm2-q8", messages=HELLO, max_tokens=2)  # a second idle worker
    assert wait_for(lambda: len(server.worker_pids()) == 3)  # and its replacement spare
    result: dict[str, Any] = {}
    first_chunk = threading.Event()

    def stream() -> None:
        body = {"model": "smollm2", "messages": LONG, "max_tokens": 40, "stream": True, "temperature": 0}
        payloads = []
        with httpx.stream(
            "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payloads.append(line[6:])
                    first_chunk.set()
        result["payloads"] = payloads

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_chunk.wait(CLIENT_TIMEOUT)
    workers = server.worker_pids()
    assert len(workers) == 3  # two models and a spare
    admin = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    assert _model(admin, "smollm2")["in_flight"] == 1  # the signal comes during the stream
    code = server.stop(signal.SIGTERM, timeout=2 * CLIENT_TIMEOUT)
    thread.join(CLIENT_TIMEOUT)
    assert code == 0, server.log()
    payloads = result["payloads"]
    assert payloads[-1] == "[DONE]"
    last = json.loads(payloads[-2])
    assert "error" not in last and last["choices"][0]["finish_reason"] == "length"  # all 40 tokens
    assert not [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def test_start_up_rejects_a_bad_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "models.yaml"
    bad.write_text(f"models:\n  m:\n    model: {{path: {SMOLLM}}}\n    sampling: {{temprature: 1}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 2
    assert "models.m.sampling.temprature: unknown key" in result.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text("models:\n  m:\n    model: {path: nowhere.gguf}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(missing)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 2
    assert "models.m.model.path: file not found" in result.stderr


def test_queue_full_and_never_fits(fresh_server: Any) -> None:
    from tests.real.server import GEMMA

    config = one_fits_config()
    config["models"]["smollm2"]["max_queue"] = 1
    config["models"]["gemma"] = model(GEMMA, model={"chat_format": "gemma"})  # estimate above 300MiB
    server = fresh_server(config)
    client = sdk(server)
    # Greedy: a sampled answer may end within a few tokens, and with it the hold the queue is full behind.
    stream = client.chat.completions.create(model="smollm2", messages=LONG, max_tokens=400, stream=True, temperature=0)
    next(stream)
    with pytest.raises(openai.RateLimitError) as full:
        client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=4)
    assert full.value.code == "queue_full"
    assert full.value.response.headers["retry-after"] == "1"
    stream.close()
    with pytest.raises(openai.APIStatusError) as never:
        client.chat.completions.create(model="gemma", messages=HELLO, max_tokens=4)
    assert never.value.status_code == 503
    assert never.value.code == "model_exceeds_memory_budget"
    assert "300 MiB" in never.value.message
    assert "retry-after" not in never.value.response.headers


def test_disconnect_frees_the_model_for_the_next_request(fresh_server: Any) -> None:
    server = fresh_server(one_fits_config())  # no spare worker: the model's worker is the only one
    client = sdk(server)
    long = {"model": "smollm2", "messages": LONG, "max_tokens": 450, "temperature": 0}
    full = client.chat.completions.create(**long)  # type: ignore[call-overload]
    assert full.usage is not None and full.usage.completion_tokens > 300
    (pid,) = server.worker_pids()
    worker = psutil.Process(pid)

    def cpu() -> float:  # the worker's CPU seconds: work done, however busy the machine is
        times = worker.cpu_times()
        return float(times.user + times.system)

    before = cpu()
    client.chat.completions.create(**long)  # type: ignore[call-overload]
    full_cpu = cpu() - before
    before = cpu()
    stream = client.chat.completions.create(stream=True, **long)  # type: ignore[call-overload]
    for _ in range(3):
        next(stream)
    stream.close()  # the client goes away
    admin = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    assert wait_for(lambda: _model(admin, "smollm2")["in_flight"] == 0 and _model(admin, "smollm2")["leases"] == 0)
    client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    # Had the abandoned generation run on to its 450 tokens, the worker would have done all its work.
    assert cpu() - before < full_cpu / 2


def _model(admin: httpx.Client, model_id: str) -> dict[str, Any]:
    listing: dict[str, Any] = {m["id"]: m for m in admin.get("/admin/models").json()["models"]}
    return dict(listing[model_id])


def test_health_answers_while_models_generate_and_load(fresh_server: Any) -> None:
    server = fresh_server(standard_config())
    client = sdk(server)
    admin = httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT)
    stream = client.chat.completions.create(model="smollm2", messages=LONG, max_tokens=400, stream=True, temperature=0)
    next(stream)
    loader = threading.Thread(
        target=lambda: client.chat.completions.create(model="gemma", messages=HELLO, max_tokens=2)
    )
    loader.start()
    for _ in range(10):
        assert httpx.get(f"{server.base_url}/health", timeout=CLIENT_TIMEOUT).status_code == 200
    # All ten answered while the stream was still generating: /health did not wait behind it.
    assert _model(admin, "smollm2")["in_flight"] == 1
    loader.join(CLIENT_TIMEOUT)
    assert server.statuses()["gemma"] == "loaded"
    finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1


def test_workers_exit_when_the_gateway_is_killed(fresh_server: Any) -> None:
    server = fresh_server(standard_config())
    sdk(server).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)
    assert wait_for(lambda: len(server.worker_pids()) == 2)  # the model's worker and a spare
    pids = server.worker_pids()
    server.process.kill()
    server.process.wait()

    def gone(pid: int) -> bool:
        return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"

    assert wait_for(lambda: all(gone(pid) for pid in pids))
