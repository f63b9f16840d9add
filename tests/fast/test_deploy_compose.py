"""deploy/compose.yaml (+ compose.gpu.yaml): every file it mounts exists, and the pieces point at each
other (Prometheus at the gateway, Grafana at Prometheus and the dashboard, volumes at the image's paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import parse_settings
from gateway.config.units import parse_duration
from tests.dockerfile import read

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return document


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of mappings (enough for these files: no sequences are overridden)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def binds(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of each volume entry."""
    result = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        result[target] = source
    return result


def check_gateway(compose: dict[str, Any]) -> dict[str, Any]:
    gateway = compose["services"]["gateway"]
    build = gateway["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    runtime = read(dockerfile)[-1]
    (volume,) = runtime.last("VOLUME").exec_form()
    mounts = binds(gateway)
    assert mounts[volume] in compose["volumes"]  # the named models volume, on the image's VOLUME
    assert binds(compose["services"]["fetch-models"])[volume] == mounts[volume]
    config_path = Path(gateway["environment"]["GATEWAY_CONFIG"])
    config_dir = DEPLOY / mounts[str(config_path.parent)]
    settings = parse_settings(
        yaml.safe_load((config_dir / config_path.name).read_text()), config_dir, check_files=False
    )
    for entry in settings.models.values():
        assert entry.model.path.parent == Path(volume), entry.model.path
    assert parse_duration(gateway["stop_grace_period"]) > settings.gateway.shutdown_grace
    assert float(gateway["environment"]["GATEWAY_WATCH_CONFIG"]) > 0
    assert gateway["ports"] == [f"{runtime.env()['GATEWAY_PORT']}:{runtime.env()['GATEWAY_PORT']}"]
    # The store and the shared limits are the compose file's own servers, started (healthy) first.
    store, limits = urlsplit(settings.gateway.store), urlsplit(settings.gateway.shared_limits)
    postgres = compose["services"][store.hostname]["environment"]
    assert store.scheme == "postgresql" and store.port == 5432
    assert (store.username, store.path) == (postgres["POSTGRES_USER"], "/" + postgres["POSTGRES_DB"])
    assert store.password == postgres["POSTGRES_PASSWORD"].removeprefix("${POSTGRES_PASSWORD:-").removesuffix("}")
    assert limits.scheme == "redis" and limits.hostname in compose["services"] and limits.port == 6379
    for server in (store.hostname, limits.hostname):
        assert gateway["depends_on"][server]["condition"] == "service_healthy"
        assert "healthcheck" in compose["services"][server]
    return {"settings": settings, "runtime": runtime}


def test_compose_wires_gateway_prometheus_and_grafana() -> None:
    compose = load("compose.yaml")
    services = compose["services"]
    assert set(services) == {"fetch-models", "gateway", "postgres", "redis", "prometheus", "grafana"}
    check_gateway(compose)
    assert services["gateway"]["depends_on"]["fetch-models"]["condition"] == "service_completed_successfully"
    for service in services.values():
        for source in binds(service).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source

    prometheus = services["prometheus"]
    scrape = yaml.safe_load((DEPLOY / binds(prometheus)["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]

    grafana = services["grafana"]
    mounts = binds(grafana)
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in prometheus["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "llm-gateway.yaml").read_text())["providers"]
    dashboards = [t for t in mounts if t.startswith(provider["options"]["path"] + "/")]
    assert [mounts[t] for t in dashboards] == ["./grafana-dashboard.json"]


def test_gpu_variant_reserves_nvidia_devices() -> None:
    compose = merged(load("compose.yaml"), load("compose.gpu.yaml"))
    checked = check_gateway(compose)
    assert "cuda" in compose["services"]["gateway"]["build"]["dockerfile"]
    assert all(e.model.n_gpu_layers == -1 for e in checked["settings"].models.values())
    for name in ("gateway", "fetch-models"):
        (device,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == "all"
