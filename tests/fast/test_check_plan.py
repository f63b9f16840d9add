"""`gateway check` prints the per-device plan from the real inventory (here: fakes of it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main as cli
from gateway.cli.check import describe_plan
from gateway.config import load_settings
from gateway.memory.estimate import kv_cells
from gateway.memory.facts import inspect_models
from gateway.memory.options import pools_for
from gateway.memory.pools import Device
from tests.ggufgen import write_tiny_gguf

MiB, GiB = 2**20, 2**30


def write_config(tmp_path: Path, gateway: dict[str, Any], models: dict[str, dict[str, Any]]) -> Path:
    write_tiny_gguf(tmp_path / "tiny.gguf", layers=4)
    entries = {name: {"model": {"path": "tiny.gguf", "n_ctx": 256, **model}} for name, model in models.items()}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"gateway": gateway, "models": entries}))
    return path


def gpus(*free_mib: int) -> list[Device]:
    return [
        Device(f"cuda{i}", f"GPU-{i}", i, "NVIDIA H200", 4096 * MiB, free * MiB, (4096 - free) * MiB)
        for i, free in enumerate(free_mib)
    ]


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> list[Device]:
    devices: list[Device] = []
    monkeypatch.setattr("gateway.engine.worker.load.backend_info", lambda: {"backend": "CUDA", "gpu_offload": True})
    monkeypatch.setattr("gateway.cli.check.read_devices", lambda: list(devices))
    return devices


def test_check_prints_where_each_model_goes(
    tmp_path: Path, fake_backend: list[Device], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_backend += gpus(4096, 2048)
    path = write_config(
        tmp_path,
        {"memory_budget": "1GiB", "budgets": {"cuda0": "1GiB", "cuda1": "auto", "cuda7": "1GiB"}},
        {
            "cpu": {},
            "gpu": {"n_gpu_layers": -1},
            "spread": {"n_gpu_layers": -1, "placement": "spread"},
            "elsewhere": {"n_gpu_layers": -1, "devices": ["cuda5", "GPU-1"]},
        },
    )
    assert cli.main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cuda0: NVIDIA H200 GPU-0, 4.0 GiB total, 4.0 GiB free, budget 1.0 GiB, reserve 1.0 GiB" in out
    assert "cuda1: NVIDIA H200 GPU-1, 4.0 GiB total, 2.0 GiB free, budget 3.0 GiB" in out
    assert "warning: gateway.budgets.cuda7 names no GPU on this machine" in out
    assert "  cpu: host: host " in out
    assert "  gpu: cuda0 (all layers): cuda0 " in out  # most room: 1 GiB budget vs 2 - 1 reserve on cuda1
    assert "  spread: spread over cuda0, cuda1" in out
    assert "warning: elsewhere.model.devices names ['cuda5'], not on this machine" in out
    assert "  elsewhere: cuda1 (all layers)" in out  # by UUID
    assert "fit together" in out


def test_check_on_a_cpu_only_machine_plans_the_host(
    tmp_path: Path, fake_backend: list[Device], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("gateway.engine.worker.load.backend_info", lambda: {"backend": "CPU", "gpu_offload": False})
    fake_backend += gpus(4096)  # a GPU the CPU build cannot use
    path = write_config(tmp_path, {"memory_budget": "1GiB"}, {"gpu": {"n_gpu_layers": -1}})
    assert cli.main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 GPU(s) found, but this llama.cpp build cannot use them" in out
    assert "  gpu: host: host " in out
    assert "cuda0" not in out.split("memory pools:")[1]


def test_never_fits_on_the_device_is_a_problem(
    tmp_path: Path, fake_backend: list[Device], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_backend += gpus(4096)
    path = write_config(tmp_path, {"budgets": {"cuda0": "100MiB"}}, {"big": {"n_gpu_layers": -1, "n_ctx": 4096}})
    assert cli.main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "problem: big can never fit: cuda0 needs" in out


def test_what_fits_together_per_device(tmp_path: Path) -> None:
    path = write_config(tmp_path, {}, {"a": {"n_gpu_layers": -1}, "b": {"n_gpu_layers": -1}})
    settings = load_settings(path)
    facts = inspect_models(settings)
    # One GPU with room for one of them only (each needs ~530 MiB with its CUDA context).
    pools = pools_for(settings, gpus(1700), 64 * GiB)
    lines, problems = describe_plan(settings, facts, pools)
    assert problems == []
    assert "not all models fit together; each fits together with:" in lines
    assert "  a: none (alone only)" in lines
    two = pools_for(settings, gpus(1700, 1700), 64 * GiB)
    lines, _ = describe_plan(settings, facts, two)
    assert "all models fit together" in lines


def test_kv_cells_follow_parallel_sequences(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {}, {"a": {}}))
    assert kv_cells(settings.models["a"]) == 256


def test_a_cap_on_loaded_models_is_named_when_memory_is_not_what_stops_them(tmp_path: Path) -> None:
    """Every pair fits and all fit in memory, but max_loaded is below the number of models: the check
    says so, instead of 'not all models fit' followed by every model fitting with every other."""
    models = {"a": {}, "b": {}, "c": {}}
    settings = load_settings(write_config(tmp_path, {"max_loaded": 2}, models))
    lines, problems = describe_plan(settings, inspect_models(settings), pools_for(settings, [], 64 * GiB))
    assert problems == []
    assert lines[-1] == "all models fit together in memory, but max_loaded: 2 keeps at most 2 loaded at once"
    uncapped = load_settings(write_config(tmp_path, {}, models))
    lines, _ = describe_plan(uncapped, inspect_models(uncapped), pools_for(uncapped, [], 64 * GiB))
    assert lines[-1] == "all models fit together"


def test_check_names_a_configured_template_and_the_reasoning_it_shows(
    tmp_path: Path, fake_backend: list[Device], capsys: pytest.CaptureFixture[str]
) -> None:
    thinking = "{% for m in messages %}{{ m.content }}{% endfor %}<think>\n"
    failing = "{{ raise_exception('system messages only') }}"
    path = write_config(tmp_path, {}, {"thinker": {"chat_template": thinking}, "broken": {"chat_template": failing}})
    assert cli.main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "thinker: " in out and "chat template: models.yaml (reasoning: think)" in out
    assert "warning: broken's chat template fails on a one-message chat: ValueError: system messages only" in out
