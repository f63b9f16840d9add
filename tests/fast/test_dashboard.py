"""The Grafana dashboard only queries metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"


def test_dashboard_queries_exported_metrics(make_config: Any, tmp_path: Path) -> None:
    app = create_app(parse_settings(make_config({"a": {}}), tmp_path), spawn=FakeWorkers().spawn)
    with TestClient(app) as client:
        client.post("/v1/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "hi"}]})
        exported = set()
        for family in text_string_to_metric_families(client.get("/metrics").text):
            # Families are declared even before their first sample (no crash yet, say).
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
            exported.update(family.name + suffix for suffix in suffixes)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bgateway_[a-z_]+", target["expr"])
    }
    assert len(dashboard["panels"]) >= 10
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, queried - exported
