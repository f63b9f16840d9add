"""models.yaml → Settings: environment references, paths resolved against the file, errors that
name the YAML path of each problem, and the published JSON schema."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.model import ModelEntry, check_template
from gateway.config.settings import Settings
from gateway.errors import ConfigError

DEFAULT_CONFIG_NAME = "models.yaml"


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = item["loc"]
        if loc and loc[0] == "upstreams":  # split off `models` before validation: report where it was written
            loc = ("models", *loc[1:])
        path = ".".join(str(part) for part in loc)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {message}" if path else message)
    return "\n".join(lines)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, path: str, environ: Mapping[str, str]) -> Any:
    """Replace `${NAME}` in strings with environment variables; a missing one is an error naming its path."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}.{i}", environ) for i, v in enumerate(value)]
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return environ[name]

        return _ENV_REF.sub(lookup, value)
    return value


DATABASE_SCHEMES = ("postgresql://", "postgres://")


def parse_settings(
    data: Any, base_dir: Path, *, check_files: bool = True, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate a parsed YAML document and resolve model paths against `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping with a 'models' section")
    data = _expand_env(data, "", os.environ if environ is None else environ)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    resolved: dict[str, ModelEntry] = {}
    problems = []
    for model_id, entry in settings.models.items():
        path = (base_dir / entry.model.path.expanduser()).resolve()
        if check_files and not path.is_file():
            problems.append(f"models.{model_id}.model.path: file not found: {path}")
        update: dict[str, Any] = {"path": path}
        if entry.model.mmproj is not None:
            update["mmproj"] = projector = (base_dir / entry.model.mmproj.expanduser()).resolve()
            if check_files and not projector.is_file():
                problems.append(f"models.{model_id}.model.mmproj: file not found: {projector}")
        speculative = entry.model.speculative
        if speculative is not None and speculative.draft is not None:
            draft = (base_dir / speculative.draft.path.expanduser()).resolve()
            if check_files and not draft.is_file():
                problems.append(f"models.{model_id}.model.speculative.draft.path: file not found: {draft}")
            update["speculative"] = speculative.model_copy(
                update={"draft": speculative.draft.model_copy(update={"path": draft})}
            )
        if entry.model.chat_template_file is not None:
            template = (base_dir / entry.model.chat_template_file.expanduser()).resolve()
            update["chat_template_file"] = template
            if check_files:
                try:  # read once: the template in effect is the one that was checked
                    update["chat_template"] = check_template(template.read_text(encoding="utf-8"))
                except OSError as exc:
                    where = f"models.{model_id}.model.chat_template_file"
                    problems.append(f"{where}: cannot read {template}: {exc.strerror}")
                except ValueError as exc:
                    problems.append(f"models.{model_id}.model.chat_template_file: {exc}")
        resolved[model_id] = entry.model_copy(update={"model": entry.model.model_copy(update=update)})
    if problems:
        raise ConfigError("\n".join(problems))
    gateway = settings.gateway
    if gateway.responses_store is not None:
        store = (base_dir / gateway.responses_store.expanduser()).resolve()
        gateway = gateway.model_copy(update={"responses_store": store})
    if gateway.usage_spill_file is not None:
        spill = (base_dir / gateway.usage_spill_file.expanduser()).resolve()
        gateway = gateway.model_copy(update={"usage_spill_file": spill})
    if gateway.prefix_store is not None:
        directory = (base_dir / gateway.prefix_store.path.expanduser()).resolve()
        gateway = gateway.model_copy(
            update={"prefix_store": gateway.prefix_store.model_copy(update={"path": directory})}
        )
    if gateway.store is not None and not gateway.store.startswith(DATABASE_SCHEMES):
        gateway = gateway.model_copy(update={"store": str((base_dir / Path(gateway.store).expanduser()).resolve())})
    return settings.model_copy(update={"models": resolved, "gateway": gateway})


def load_settings(path: Path, *, check_files: bool = True) -> Settings:
    """Read and validate a models.yaml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_settings(data, path.resolve().parent, check_files=check_files)


def default_settings(cwd: Path) -> Settings:
    """The embedded default: the bundled small instruct model, fetched into ./models by scripts/serve."""
    from importlib.resources import files

    data = yaml.safe_load(files("gateway").joinpath("default_models.yaml").read_text(encoding="utf-8"))
    return parse_settings(data, cwd)


def json_schema() -> dict[str, Any]:
    """JSON schema of models.yaml, published as schema/models.schema.json."""
    schema = Settings.model_json_schema()
    # In the file, upstream entries are written under `models` (see Settings._split_upstreams).
    upstreams = schema["properties"].pop("upstreams")
    schema["properties"]["models"]["additionalProperties"] = {
        "anyOf": [schema["properties"]["models"]["additionalProperties"], upstreams["additionalProperties"]]
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Gateway models.yaml"
    return schema
