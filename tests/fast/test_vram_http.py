"""Per-device memory over HTTP: /v1/models, /admin/models and /metrics show bytes per model per pool
and each pool's budget, use and free memory (fake GPUs, fake workers logging CUDA buffers)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.memory.inventory import SystemInventory
from gateway.testing.fakellama import FakeScript
from gateway.testing.fakenvml import FakeGpus
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.vram_helpers import NO_SYSFS, GiB, MiB, cuda_log, gpus


def workers_on(fake: FakeGpus, script: FakeScript) -> FakeWorkers:
    """Fake workers that allocate on the fake GPUs what their load log says."""
    return FakeWorkers(default=replace(script, gpus=fake))


def test_models_admin_and_metrics_show_bytes_per_device(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(8 * GiB)
    workers = workers_on(fake, FakeScript(load_log=cuda_log(100)))
    doc = make_config({"gpu": {"model": {"n_gpu_layers": -1}}, "cpu": {}}, gateway={"budgets": {"cuda0": "2GiB"}})
    settings = parse_settings(doc, tmp_path)
    inventory = SystemInventory(nvml=fake, sysfs=NO_SYSFS)
    with TestClient(create_app(settings, spawn=workers.spawn, inventory=inventory)) as client:
        before = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert before["gpu"]["placement"] == "cuda0 (all layers)"
        estimate = before["gpu"]["memory_pools"]["cuda0"]
        assert estimate > 0 and set(before["cpu"]["memory_pools"]) == {"host"}
        assert client.post("/admin/models/gpu/load").status_code == 200
        after = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        measured = 170 * MiB + fake.context_bytes
        held = max(estimate, measured)  # as on the host: the first decode allocates more than the load
        assert after["gpu"]["status"] == {"value": "loaded"}
        assert after["gpu"]["memory_pools"]["cuda0"] == held

        admin = client.get("/admin/models").json()
        pools = {p["name"]: p for p in admin["pools"]}
        assert pools["cuda0"]["budget"] == 2 * GiB
        assert pools["cuda0"]["used"] == held
        assert pools["cuda0"]["loading"] == 0
        assert pools["cuda0"]["total"] == 8 * GiB and pools["cuda0"]["uuid"] == "GPU-0"
        gpu = next(m for m in admin["models"] if m["id"] == "gpu")
        assert gpu["measured_pools"]["cuda0"] == measured

        text = client.get("/metrics").text

        def gauge(name: str, labels: str) -> float:
            match = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.M)
            assert match, (name, labels)
            return float(match.group(1))

        assert gauge("gateway_model_memory_bytes", 'model="gpu",pool="cuda0"') == held
        assert gauge("gateway_pool_budget_bytes", 'pool="cuda0",uuid="GPU-0"') == 2 * GiB
        assert gauge("gateway_pool_used_bytes", 'pool="cuda0",uuid="GPU-0"') == held
        assert gauge("gateway_pool_loading_bytes", 'pool="cuda0",uuid="GPU-0"') == 0
        assert gauge("gateway_pool_total_bytes", 'pool="cuda0",uuid="GPU-0"') == 8 * GiB
        assert gauge("gateway_pool_free_bytes", 'pool="cuda0",uuid="GPU-0"') <= 8 * GiB - measured
        assert gauge("gateway_pool_budget_bytes", 'pool="host",uuid=""') > 0
        # The host pool as the scheduler counts it, both loaded models' (not a measured-or-estimated sum).
        host_used = re.search(r"^gateway_memory_used_bytes (\S+)$", text, re.M)
        assert host_used and float(host_used.group(1)) == admin["memory_used"] == pools["host"]["used"] > 0
        assert re.search(r"^gateway_memory_loading_bytes 0\.0$", text, re.M)


def test_a_device_out_of_memory_is_an_openai_shaped_503(make_config: Any, tmp_path: Path) -> None:
    fake = gpus(1 * GiB)
    workers = workers_on(fake, FakeScript(load_log=cuda_log(2000)))  # more than the device has
    doc = make_config({"m": {"model": {"n_gpu_layers": -1}}}, gateway={"gpu_reserve": "64MiB"})
    settings = parse_settings(doc, tmp_path)
    inventory = SystemInventory(nvml=fake, sysfs=NO_SYSFS)
    with TestClient(create_app(settings, spawn=workers.spawn, inventory=inventory)) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 503
    assert reply.headers["retry-after"]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "device_out_of_memory")
    assert "cuda0 is out of memory (needed 2582 MiB, " in error["message"]
