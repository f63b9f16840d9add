"""deploy/kubernetes/inference-extension: the InferencePool selects the gateway pods, and the endpoint
picker's metric flags name series the gateway exports (the metrics contract)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.config import parse_settings
from gateway.testing.fakeworker import FakeWorkers
from gateway.web.app import create_app
from tests.fast.test_deploy_kubernetes import container, one, rendered, settings_of

HERE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "inference-extension"
CONTRACT = {
    "total-queued-requests-metric": "gateway_requests_waiting",
    "total-running-requests-metric": "gateway_requests_running",
    "kv-cache-usage-percentage-metric": "gateway_kv_cache_usage_ratio",
}
NAME = {"type": "string", "minLength": 1}
PORT = {"type": "object", "required": ["number"], "properties": {"number": {"type": "integer", "minimum": 1}}}
POOL_SCHEMA = {  # inference.networking.k8s.io/v1 InferencePool: the required fields and their shapes
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["selector", "targetPorts", "endpointPickerRef"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "targetPorts": {"type": "array", "minItems": 1, "maxItems": 8, "items": PORT},
                "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
                "endpointPickerRef": {
                    "type": "object",
                    "required": ["name", "port"],
                    "additionalProperties": False,
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": NAME,
                        "port": PORT,
                        "failureMode": {"enum": ["FailOpen", "FailClose"]},
                    },
                },
            },
        }
    },
}


def documents() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((HERE / "inferencepool.yaml").read_text()) if d}


def metric_spec(text: str) -> tuple[str, dict[str, str]]:
    """The EPP's metric spec syntax: name or name{label=value,...}."""
    match = re.fullmatch(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^{}]+)\})?\s*", text)
    assert match, text
    labels = dict(pair.strip().split("=") for pair in (match.group(2) or "").split(",") if pair.strip())
    return match.group(1), labels


def test_pool_selects_the_gateway_pods_and_port() -> None:
    docs = documents()
    pool, route = docs["InferencePool"], docs["HTTPRoute"]
    jsonschema.validate(pool, POOL_SCHEMA)
    base = rendered("base")
    labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [container(base)["ports"][0]["containerPort"]]
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    pool_ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool["metadata"]["name"]}
    assert backend == pool_ref

    values = yaml.safe_load((HERE / "epp-values.yaml").read_text())
    assert values["inferencePool"]["modelServers"]["matchLabels"] == pool["spec"]["selector"]["matchLabels"]
    assert values["inferencePool"]["targetPorts"] == pool["spec"]["targetPorts"]


def test_epp_flags_follow_the_contract_for_a_pinned_model() -> None:
    flags = yaml.safe_load((HERE / "epp-values.yaml").read_text())["inferenceExtension"]["flags"]
    settings = settings_of(rendered("base"))
    readme = (HERE / "README.md").read_text()
    for flag, name in CONTRACT.items():
        metric, labels = metric_spec(flags[flag])
        assert metric == name and f"`{name}{{model}}`" in readme
        model = labels["model"]
        assert model in settings.models and settings.models[model].pinned  # a cold model would look idle
    assert flags["model-server-metrics-path"] == "/metrics"


def test_gateway_exports_the_contract_metrics(make_config: Any, tmp_path: Path) -> None:
    app = create_app(parse_settings(make_config({"a": {}}), tmp_path), spawn=FakeWorkers().spawn)
    with TestClient(app) as client:
        client.post("/v1/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "hi"}]})
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    for name in CONTRACT.values():
        family = families[name]
        assert family.type == "gauge"
        assert {s.labels.get("model") for s in family.samples} == {"a"}
