"""The non-GPU logic of scripts/gpu-check: the budget it sets, and how it judges what it recorded."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gateway.gguf.header import read_gguf_info
from gateway.memory.footprint import footprint
from gateway.memory.planner import Placement

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def test_budget_holds_two_models_never_three() -> None:
    needs = {"small": 1000 * MiB, "medium": 1200 * MiB, "large": 1800 * MiB}
    budget = gpu_check.choose_budget(needs)
    assert 1200 * MiB + 1800 * MiB <= budget < sum(needs.values())
    with pytest.raises(AssertionError):
        gpu_check.choose_budget({"a": 10 * MiB, "b": 10 * MiB, "c": 10})


def test_within_five_percent() -> None:
    assert gpu_check.within(1050, 1000)
    assert not gpu_check.within(1051, 1000)
    assert not gpu_check.within(0, 0)


def load(model: str, evicted: list[str], need: int, buffers: int, nvml: int | None, total: int | None) -> object:
    error = (need - nvml) / nvml if nvml else None
    return gpu_check.Load(model, evicted, need, buffers, nvml, error, total, 1.0)


def good_summary() -> object:
    summary = gpu_check.Summary(device="cuda0", budget=3000 * MiB, context_bytes=400 * MiB)
    summary.loads = [
        load("small", [], 1100 * MiB, 600 * MiB, 1000 * MiB, 1000 * MiB),
        load("medium", [], 1300 * MiB, 800 * MiB, 1210 * MiB, 2210 * MiB),
        load("large", ["small"], 1800 * MiB, 1300 * MiB, 1690 * MiB, 2900 * MiB),
    ]
    summary.returned_after_unload = [{"model": "small", "visible": True, "waited": 1.2}]
    summary.free_at_start = summary.free_at_end = 100_000 * MiB
    return summary


def test_a_run_where_everything_holds() -> None:
    assert gpu_check.judge(good_summary()) == []


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        (lambda s: setattr(s.loads[2], "ours_total", 3100 * MiB), "> budget"),
        (lambda s: setattr(s.loads[1], "nvml", 1400 * MiB), "over 5% apart"),
        (lambda s: setattr(s.loads[0], "need", 900 * MiB), "not conservative"),
        (lambda s: setattr(s.loads[2], "evicted", []), "did not force eviction"),
        (lambda s: s.returned_after_unload[0].update(visible=False), "not seen free again"),
        (lambda s: setattr(s, "free_at_end", 99_000 * MiB), "after unloading all"),
        (lambda s: setattr(s.loads[0], "nvml", None), "no per-process figure"),
        (lambda s: setattr(s.loads[1], "scheduler", 1000 * MiB), "below NVML"),
    ],
)
def test_each_check_can_fail(change: object, failure: str) -> None:
    summary = good_summary()
    change(summary)  # type: ignore[operator]
    assert any(failure in f for f in gpu_check.judge(summary))


def test_synthetic_models_have_the_sizes_the_check_relies_on(tmp_path: Path) -> None:
    info = read_gguf_info(gpu_check.write_model(tmp_path / "m.gguf", layers=2, embedding=256))
    assert info.architecture == "llama"
    assert info.block_count == 2
    assert info.has_output_tensor
    assert info.input_bytes == gpu_check.VOCAB * 256 * 2
    need = footprint(info, gpu_check.N_CTX, Placement(("cuda0",), None, -1)).vector
    assert need["cuda0"] > info.tensor_bytes - info.input_bytes


def test_the_script_is_sound_shell() -> None:
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu-check")], check=True)


def test_dry_run_goes_through_the_scheduler_on_fake_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    """The course on fake GPUs and fake workers: the third load evicts the least recently used model
    by VRAM, NVML's use stays inside the budget, memory returns after each unload, and the scheduler's
    figures match the fake NVML's."""
    assert gpu_check.main(["--dry-run"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dry_run"] and summary["failures"] == []
    assert [load["evicted"] for load in summary["loads"]] == [[], [], ["small"], ["medium"]]
    assert all(load["ours_total"] <= summary["budget"] for load in summary["loads"])
    # The larger of the estimate and what was measured counts (as on the host).
    assert all(load["scheduler"] == max(load["need"], load["nvml"]) for load in summary["loads"])
    assert [entry["visible"] for entry in summary["returned_after_unload"]] == [True, True]


def test_the_shell_script_runs_the_dry_run(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check"), "--dry-run", "--out", str(tmp_path)],
        env={**os.environ, "GPU_CHECK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "gpu-check.json").read_text())["failures"] == []


def test_dry_run_all_runs_the_whole_course(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--dry-run --all`: the course a lent GPU would run, on the fake NVML and fake workers, in one
    JSON file and a short table."""
    assert gpu_check.main(["--dry-run", "--all", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "gpu-check.json").read_text())
    checks = {c["name"]: c for c in document["checks"]}
    assert list(checks) == [
        "preflight",
        "decode",
        "cuda_context",
        "cpu_worker_off_the_gpu",
        "oom_at_run_time",
        "oom_at_load",
        "no_per_process_figures",
    ]
    assert all(c["ok"] for c in checks.values()) and document["failures"] == []
    decode = checks["decode"]["detail"]
    assert decode["after_decode"] > decode["after_load"]  # the first decode allocated on the device
    assert decode["counted"] >= decode["after_decode"]
    assert "cuda0" in checks["oom_at_run_time"]["detail"]["message"]
    assert checks["oom_at_load"]["detail"]["spawns"] == ["idle", "big", "big"]
    assert document["eviction_course"]["failures"] == []
    table = capsys.readouterr().err
    assert "ok   oom_at_load" in table and "ok   eviction_course" in table


def test_the_course_fails_when_what_it_provokes_does_not_happen(tmp_path: Path) -> None:
    """A helper that never fills the device: neither OOM happens, and both checks say so."""
    import asyncio

    course = importlib.import_module("gpu_check_all")
    kit = course.dry_kit(tmp_path)
    kit.fill = lambda keep: None
    checks = asyncio.run(course.course(kit))
    assert {c.name for c in checks if not c.ok} == {"oom_at_run_time", "oom_at_load"}
    assert "FAIL oom_at_load" in course.table(checks)
