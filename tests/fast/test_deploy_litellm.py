"""deploy/litellm/config.yaml balances each model over several gateways that serve it."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import yaml

from gateway.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_litellm_groups_each_model_over_several_gateways() -> None:
    config = yaml.safe_load((DEPLOY / "litellm" / "config.yaml").read_text())
    gateway = load_settings(DEPLOY / "compose" / "gateway" / "models.yaml", check_files=False)
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for entry in config["model_list"]:
        groups[entry["model_name"]].append(entry["litellm_params"])
    assert len(groups) >= 2
    for name, params in groups.items():
        bases = [p["api_base"] for p in params]
        assert len(set(bases)) == len(bases) >= 2, name
        for p in params:
            provider, _, model = p["model"].partition("/")
            assert provider == "openai" and gateway.resolve(model) == model  # a model id the gateways serve
            assert p["api_base"].startswith("http") and p["api_base"].endswith("/v1")
            assert p["api_key"].startswith("os.environ/")  # no key in the file
    router = config["router_settings"]
    assert router["routing_strategy"] in {"least-busy", "simple-shuffle", "latency-based-routing"}
    assert router["num_retries"] >= 1 and router["cooldown_time"] > 0
    assert config["general_settings"]["master_key"].startswith("os.environ/")
