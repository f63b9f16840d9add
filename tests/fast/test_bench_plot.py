"""The batching benchmark's table and plot are redrawn from a saved result, without a plotting library."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


def test_replot_draws_a_line_per_server_and_the_table(tmp_path: Path) -> None:
    levels = [1, 2, 4]
    rates = {"gateway": [100.0, 90.0, 180.0], "llama-server": [110.0, 95.0, 150.0], "ceiling": [120.0, 118.0, 200.0]}
    result = {
        "levels": levels,
        "tokens": 64,
        "threads": 2,
        "model": "m.gguf",
        "prefix": {"first_ttft": 1.0, "second_ttft": 0.1, "ratio": 0.1},
    }
    for name, values in rates.items():
        result[name] = {
            str(n): {"tokens_per_s": v, "ttft_p50": 0.05, "ttft_p95": 0.06, "ttft_max": 0.07, "decode_tps": v + 5}
            for n, v in zip(levels, values, strict=True)
        }
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(result))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_batching.py"), "--replot", str(saved), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    root = ET.parse(out / "batching.svg").getroot()
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 3
    assert all(len(line.get("points", "").split()) == len(levels) for line in lines)
    legend = {t.text for t in root.iter(f"{SVG}text")}
    assert set(rates) <= legend
    # Higher rates are drawn higher (smaller y): the gateway's 180 at 4 streams above its 90 at 2.
    gateway = [tuple(map(float, p.split(","))) for p in lines[0].get("points", "").split()]
    assert gateway[2][1] < gateway[1][1]
    table = (out / "batching.md").read_text()
    assert "| gateway | 100 tok/s, TTFT 0.05/0.06 s | 90 tok/s" in table
    assert "gateway 105, llama-server 115, ceiling 125 tok/s (gateway 0.84x the ceiling)" in table
