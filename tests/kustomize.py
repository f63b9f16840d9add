"""Renders the kustomize bases in deploy/kubernetes for the tests, without kubectl: the subset they
use (resources, images, JSON 6902 patches). tests/fast/test_deploy_kubernetes.py checks this rendering
against `kubectl kustomize` where kubectl is installed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]


def render(directory: Path) -> list[Resource]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images", "patches"}, set(kustomization)
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path))
        else:
            resources.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in containers(resource):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        for resource in resources:
            if resource["kind"] == target["kind"] and resource["metadata"]["name"] == target["name"]:
                for op in ops:
                    apply(resource, op)
    return resources


def containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def apply(document: Resource, op: dict[str, Any]) -> None:
    """One JSON patch (RFC 6902) operation: add or replace."""
    assert op["op"] in ("add", "replace"), op
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    value = copy.deepcopy(op["value"])
    if isinstance(node, list):
        if last == "-":
            node.append(value)
        elif op["op"] == "add":
            node.insert(int(last), value)
        else:
            node[int(last)] = value
    else:
        assert op["op"] == "add" or last in node, op["path"]
        node[last] = value
