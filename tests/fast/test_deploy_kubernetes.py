"""deploy/kubernetes: the rendered manifests are valid Kubernetes objects (strict schema validation
with kubernetes-validate, offline), and they hold together: probes, config reload, keys, storage."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.config import parse_settings
from gateway.config.units import parse_bytes
from tests.dockerfile import read
from tests.kustomize import Resource, containers, render

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
VARIANTS = ["base", "gpu"]
# The oldest Kubernetes these manifests are meant for, and the newest the validator knows.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]


def object_schema(required: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": required}


STRING = {"type": "string", "minLength": 1}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1}
# Custom resources have no schema in kubernetes-validate: these hold the fields their operators require.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): object_schema(
        {
            "spec": object_schema(
                {
                    "selector": object_schema({"matchLabels": LABELS}),
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            **object_schema({"port": STRING, "path": STRING}),
                            "properties": {"port": STRING, "path": STRING, "interval": STRING},
                            "additionalProperties": False,
                        },
                    },
                }
            )
        }
    ),
}


def rendered(variant: str) -> list[Resource]:
    return render(KUBE / variant)


def one(resources: list[Resource], kind: str) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def validate(resource: Resource) -> None:
    custom = CUSTOM.get((resource["apiVersion"], resource["kind"]))
    if custom is not None:
        jsonschema.validate(resource, custom)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_pass_kubernetes_schemas(variant: str) -> None:
    resources = rendered(variant)
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for resource in resources:
        validate(resource)


def test_validation_rejects_a_broken_manifest() -> None:
    deployment = one(rendered("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = one(rendered("base"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["prot"] = "http"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendering_matches_kubectl_kustomize(variant: str) -> None:
    output = subprocess.run(
        ["kubectl", "kustomize", str(KUBE / variant)], capture_output=True, text=True, check=True
    ).stdout
    theirs = {(r["kind"], r["metadata"]["name"]): r for r in yaml.safe_load_all(output) if r}
    ours = {(r["kind"], r["metadata"]["name"]): r for r in rendered(variant)}
    assert theirs == ours


def container(resources: list[Resource], name: str = "gateway") -> dict[str, Any]:
    (found,) = [c for c in containers(one(resources, "Deployment")) if c["name"] == name]
    return found


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in spec.get("env", [])}


def settings_of(resources: list[Resource]) -> Any:
    """The ConfigMap's models.yaml, with ${VARS} taken from the Secret the pod reads."""
    secret = one(resources, "Secret")
    gateway = container(resources)
    assert [s["secretRef"]["name"] for s in gateway["envFrom"]] == [secret["metadata"]["name"]]
    text = one(resources, "ConfigMap")["data"]["models.yaml"]
    return parse_settings(yaml.safe_load(text), Path("/etc/gateway"), check_files=False, environ=secret["stringData"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_holds_together(variant: str) -> None:
    resources = rendered(variant)
    deployment = one(resources, "Deployment")
    pod = deployment["spec"]["template"]
    gateway = container(resources)
    image = read(REPO / "deploy" / ("Dockerfile.cuda" if variant == "gpu" else "Dockerfile"))[-1]
    assert "command" not in gateway and "args" not in gateway  # the image's `gateway serve`
    assert pod["spec"]["securityContext"]["runAsUser"] == int(image.last("USER").value.split(":")[0])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True

    port = gateway["ports"][0]
    assert port["containerPort"] == int(env_of(gateway)["GATEWAY_PORT"]) == int(image.env()["GATEWAY_PORT"])
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port["name"]}
    startup = gateway["startupProbe"]
    assert startup["httpGet"]["path"] == "/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # pinned models load meanwhile

    # The config is a ConfigMap directory mount (a subPath mount never sees updates), watched for changes.
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_path = Path(env_of(gateway)["GATEWAY_CONFIG"])
    (config_mount,) = [m for m in mounts.values() if Path(m["mountPath"]) == config_path.parent]
    assert "subPath" not in config_mount
    configmap = one(resources, "ConfigMap")
    assert volumes[config_mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]
    assert float(env_of(gateway)["GATEWAY_WATCH_CONFIG"]) > 0

    settings = settings_of(resources)
    (models_mount,) = [m for m in mounts.values() if m["mountPath"] == image.last("VOLUME").exec_form()[0]]
    claim = volumes[models_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == one(resources, "PersistentVolumeClaim")["metadata"]["name"]
    for entry in settings.models.values():
        assert entry.model.path.parent == Path(models_mount["mountPath"])
    assert settings.gateway.memory_budget < parse_bytes(gateway["resources"]["limits"]["memory"] + "B")
    keys = {k.id: k.key for k in settings.gateway.api_keys}
    assert keys == {"team": one(resources, "Secret")["stringData"]["TEAM_KEY"]}

    prestop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.gateway.shutdown_grace + prestop
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_monitor_and_budget_select_the_pods(variant: str) -> None:
    resources = rendered(variant)
    labels = one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(resources, "Service")
    monitor = one(resources, "ServiceMonitor")
    budget = one(resources, "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    replicas = one(resources, "Deployment")["spec"]["replicas"]
    assert budget["spec"]["maxUnavailable"] < replicas


def test_gpu_variant_requests_a_gpu_and_offloads() -> None:
    resources = rendered("gpu")
    gateway = container(resources)
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert all(c["image"] == "llm-gateway:cuda" for c in containers(one(resources, "Deployment")))
    assert all(e.model.n_gpu_layers == -1 for e in settings_of(resources).models.values())
    cpu = rendered("base")
    assert all(c["image"] == "llm-gateway:cpu" for c in containers(one(cpu, "Deployment")))
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]


def test_state_servers_are_valid_and_the_gateway_points_at_them() -> None:
    """deploy/kubernetes/state (PostgreSQL, Redis) validates, and the base's Secret names its Services
    with the credentials its PostgreSQL is given."""
    state = render(KUBE / "state")
    assert sorted(r["kind"] for r in state) == ["Deployment", "Secret", "Service", "Service", "StatefulSet"]
    for resource in state:
        validate(resource)
    services = {r["metadata"]["name"]: r for r in state if r["kind"] == "Service"}
    workloads = {r["metadata"]["name"]: r for r in state if r["kind"] in ("Deployment", "StatefulSet")}
    for name, service in services.items():
        labels = workloads[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    settings = settings_of(rendered("base"))
    store = urlsplit(settings.gateway.store)
    postgres = one(state, "Secret")["stringData"]
    assert store.scheme == "postgresql" and store.hostname in services
    assert store.port == services[store.hostname]["spec"]["ports"][0]["port"]
    assert (store.username, store.password, store.path) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"],
    )
    redis = urlsplit(settings.gateway.shared_limits)
    assert redis.scheme == "redis" and redis.hostname in services
    assert redis.port == services[redis.hostname]["spec"]["ports"][0]["port"]
    assert settings_of(rendered("gpu")).gateway.store == settings.gateway.store
