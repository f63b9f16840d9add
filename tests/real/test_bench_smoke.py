"""`scripts/bench --quick` runs end to end and writes its three files (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.real.server import REPO

pytestmark = pytest.mark.real


def test_bench_quick_writes_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "bench"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    for key in (
        "single_stream",
        "alternation",
        "cold_start",
        "health_under_load",
        "memory",
        "concurrency_tps",
        "structured",
    ):
        assert key in data
    assert {"raw", "gateway", "peer"} <= set(data["single_stream"])
    assert data["single_stream"]["gateway"]["decode_tps"] > 0
    for model in data["memory"].values():  # the estimate's error per pool (the host on this machine)
        assert model["pools"]["host"]["measured"] > 0 and abs(model["pools"]["host"]["error_pct"]) < 100
    assert "Memory estimate vs measured on host" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.md").read_text().startswith("| measure |")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
