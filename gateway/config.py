"""models.yaml → immutable, validated settings.

Validation errors name the YAML path of each problem (`models.mistral-7b.sampling.temprature`), and
relative model paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gateway import structured
from gateway.errors import ConfigError, GatewayError
from gateway.units import parse_bytes, parse_duration

DEFAULT_CONFIG_NAME = "models.yaml"


def _budget(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return parse_bytes(value)


ByteSize = Annotated[
    int,
    BeforeValidator(parse_bytes),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "examples": ["512MiB", "4GiB"]}]}),
]
Budget = Annotated[
    int | None,
    BeforeValidator(_budget),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "examples": ["auto", "4GiB", "512MiB"]},
            ]
        }
    ),
]
_POOL_NAME = re.compile(r"^(host|gpu|(cuda|rocm|vulkan|metal)\d+|GPU-[0-9a-fA-F-]+)$")


def _pool_budget(value: Any) -> Any:
    """'auto', a share of the device ('90%'), or bytes."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().endswith("%"):
        share = float(value.strip()[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"'{value}': a share must be above 0% and at most 100%")
        return f"{share:g}%"
    return parse_bytes(value)


PoolBudget = Annotated[
    int | str,
    BeforeValidator(_pool_budget),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^(auto|\d+(\.\d+)?%|\d+(\.\d+)?\s*[a-zA-Z]*)$"},
            ],
            "examples": ["auto", "90%", "40GiB"],
        }
    ),
]
Placement = Literal["pack", "spread"]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "examples": ["30s", "10m", "1h"]}]}),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    """How llama.cpp loads the file."""

    path: Path = Field(description="GGUF file, relative to the configuration file")
    n_ctx: int = Field(2048, ge=16, description="context window in tokens")
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads all layers, 0 none, N that many")
    n_batch: int = Field(512, ge=1, description="prompt-processing batch size")
    chat_format: str | None = Field(
        None, description="llama-cpp-python chat format name; default: the GGUF's tokenizer.chat_template"
    )
    use_mmap: bool = True
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="embedding models: how token vectors become one; default: the GGUF's own"
    )
    devices: list[str] | None = Field(
        None, description="GPUs this model may use (cuda0, cuda1, ... or GPU UUIDs); default: any"
    )
    main_gpu: int | None = Field(None, ge=0, description="the GPU (cudaN) to use first when the model fits on one")
    tensor_split: list[float] | None = Field(
        None,
        min_length=1,
        description="share of the offloaded layers per GPU (in `devices` order, else cuda0, cuda1...): always spread",
    )
    placement: Placement | None = Field(
        None, description="pack: one GPU when it fits; spread: across all GPUs; default gateway.placement"
    )

    @model_validator(mode="after")
    def _placement_is_consistent(self) -> ModelSection:
        if self.devices is not None:
            bad = [d for d in self.devices if d in ("host", "gpu") or not _POOL_NAME.match(d)]
            if bad or not self.devices:
                raise ValueError(f"devices: {bad or '[]'}: name GPUs as cuda0, cuda1, ... or by UUID")
        if self.tensor_split is not None:
            if any(share < 0 for share in self.tensor_split) or sum(self.tensor_split) <= 0:
                raise ValueError("tensor_split: shares must be >= 0 and not all 0")
            if self.devices is not None and len(self.devices) != len(self.tensor_split):
                raise ValueError("tensor_split: give one share per entry of devices")
        return self


class SamplingSection(_Section):
    """Defaults for requests that do not set these fields."""

    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    repeat_penalty: float = Field(1.0, ge=0)
    repeat_last_n: int = Field(64, ge=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = None


class RuntimeSection(_Section):
    thread_count: int | None = Field(None, ge=1, description="threads for generation; default: half the cores")
    parallel: int = Field(
        1, ge=1, le=64, description="requests decoded together (continuous batching); the KV cache holds n_ctx for each"
    )
    verbose: bool = False


class OutputSection(_Section):
    max_tokens: int | None = Field(
        None, ge=1, description="default completion length; default: until the context is full"
    )
    grammar_schema: dict[str, Any] | None = Field(
        None, description="JSON schema every answer must follow unless the request sets response_format"
    )

    @field_validator("grammar_schema")
    @classmethod
    def _enforceable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                structured.check(value, "grammar_schema")
            except GatewayError as exc:
                raise ValueError(exc.message) from None
        return value


class ModelEntry(_Section):
    """One model clients can name in `model`."""

    aliases: list[str] = Field(default_factory=list)
    pinned: bool = Field(False, description="loaded at start and never evicted")
    ttl: Duration | None = Field(None, description="idle time before unloading; absent: until evicted")
    max_queue: int | None = Field(
        None, ge=1, description="requests running or waiting for this model; default gateway.max_queue"
    )
    embedding: bool = Field(False, description="serve /v1/embeddings (and nothing else) with this model")
    model: ModelSection
    sampling: SamplingSection = SamplingSection()
    runtime: RuntimeSection = RuntimeSection()
    output: OutputSection = OutputSection()


class UpstreamServer(_Section):
    """One OpenAI-compatible server a remote model is served by (another gateway, llama-server, vLLM...)."""

    base_url: str = Field(pattern=r"^https?://[^\s/]+", description="its OpenAI API root, e.g. http://gpu-box:8000/v1")
    api_key: str | None = Field(None, description="sent as a Bearer token; may reference ${NAME}")
    model: str | None = Field(None, min_length=1, description="the model name there; default: this entry's id")
    timeout: Duration = Field(
        600.0, description="longest wait for its answer to begin, and between two pieces of a stream"
    )
    connect_timeout: Duration = Field(5.0, description="longest wait for a connection")


def _servers(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class CircuitBreakerSection(_Section):
    failures: int = Field(3, ge=1, description="consecutive failures that open the circuit of one server")
    cooldown: Duration = Field(30.0, description="how long an open circuit sends nothing to that server")


class UpstreamEntry(_Section):
    """A model served by other machines: requests pass through to the first server that works, in order.
    No memory budget applies: nothing is loaded here."""

    aliases: list[str] = Field(default_factory=list)
    max_queue: int | None = Field(
        None, ge=1, description="requests in flight to this model at once; default gateway.max_queue"
    )
    upstream: Annotated[list[UpstreamServer], BeforeValidator(_servers)] = Field(
        min_length=1, description="a server, or several tried in order (failover)"
    )
    breaker: CircuitBreakerSection = CircuitBreakerSection()


class ApiKey(_Section):
    """A client key. Give the key itself (it may reference an environment variable, `${NAME}`), or its
    sha256 hex digest so the file holds no secret."""

    id: str = Field(min_length=1, description="name for logs and metrics")
    key: str | None = Field(None, min_length=8)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = Field(None, description="models (ids or aliases) this key may use; absent: all")
    rpm: int | None = Field(None, ge=1, description="requests per minute")

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'key' and 'sha256'")
        return self


class GatewaySection(_Section):
    memory_budget: Budget = Field(
        None,
        description="bytes all loaded models may use together, or 'auto' (80% of physical memory, or of a lower "
        "cgroup limit)",
    )
    budgets: dict[str, PoolBudget] = Field(
        default_factory=dict,
        description="memory pools: host (RAM) and each GPU (cuda0, rocm1, a GPU UUID, or gpu for every GPU not "
        "named): bytes, a share ('90%') or 'auto' (host: 80% of RAM; GPU: its memory minus gpu_reserve)",
    )
    gpu_reserve: ByteSize = Field(2**30, description="memory left free on every GPU (auto budgets, free-memory check)")
    placement: Placement = Field("pack", description="pack: a model on one GPU when it fits; spread: across all GPUs")
    max_loaded: int | None = Field(None, ge=1, description="cap on resident models")
    max_queue: int = Field(16, ge=1, description="per model: requests running or waiting before 429")
    room_wait: Duration = Field(30.0, description="how long a request waits for busy models to free memory before 503")
    load_timeout: Duration = Field(300.0, description="longest a model load may take")
    failure_cooldown: Duration = Field(5.0, description="after a failed load, requests get 503 this long")
    shutdown_grace: Duration = Field(30.0, description="on SIGTERM, how long in-flight streams may finish")
    cpu_threads: int | None = Field(
        None,
        ge=0,
        description="CPU threads generations may use at once across models (default: all cores; 0: no limit)",
    )
    cpu_wait_max: Duration = Field(
        2.0,
        description="longest a model waits for CPU threads other models hold before it runs anyway (oversubscribed)",
    )
    stream_interval: Duration = Field(
        0.015,
        description="streams coalesce tokens produced within this interval into one chunk (0: a chunk per token)",
    )
    api_keys: list[ApiKey] = Field(default_factory=list, description="absent or empty: no authentication")
    admin_key: str | None = Field(None, min_length=8, description="guards /admin; may reference ${NAME}")
    admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; default none")
    max_body_bytes: ByteSize = Field(8 * 2**20, description="larger request bodies get 413")
    access_log: str | None = Field("stderr", description="'stderr', a file path, or null for none")
    log_content: bool = Field(False, description="include prompts and outputs in access logs")
    spare_workers: int = Field(
        1, ge=0, le=4, description="workers started ahead of need (llama.cpp imported, no model) to cut cold starts"
    )
    responses_store: Path | None = Field(
        None,
        description="sqlite file (relative to this file) keeping stored /v1/responses across restarts; null: in memory",
    )
    responses_store_max: int = Field(
        1000, ge=1, description="stored /v1/responses kept for previous_response_id; the oldest go first"
    )

    @model_validator(mode="after")
    def _pools_are_named(self) -> GatewaySection:
        bad = [name for name in self.budgets if not _POOL_NAME.match(name)]
        if bad:
            raise ValueError(f"budgets: {bad}: pools are host, gpu, cuda0, cuda1, ..., rocm0, ... or a GPU UUID")
        if "host" in self.budgets and self.memory_budget is not None:
            raise ValueError("budgets.host and memory_budget both set the host budget: give one")
        return self


class Settings(_Section):
    gateway: GatewaySection = GatewaySection()
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    # Entries of `models` that name an `upstream` instead of a GGUF (split off before validation).
    upstreams: dict[str, UpstreamEntry] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_upstreams(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or "upstreams" in data:
            return data
        models = data["models"]
        remote = {k: v for k, v in models.items() if isinstance(v, dict) and "upstream" in v}
        local = {k: v for k, v in models.items() if k not in remote}
        return {**data, "models": local, "upstreams": remote}

    @model_validator(mode="after")
    def _some_model(self) -> Settings:
        if not self.models and not self.upstreams:
            raise ValueError("models: configure at least one model")
        return self

    @model_validator(mode="after")
    def _keys_name_known_models(self) -> Settings:
        for i, key in enumerate(self.gateway.api_keys):
            for name in key.models or []:
                if self.resolve(name) is None:
                    raise ValueError(f"gateway.api_keys.{i}.models: no model or alias named '{name}'")
        ids = [k.id for k in self.gateway.api_keys]
        if len(ids) != len(set(ids)):
            raise ValueError("gateway.api_keys: key ids must be unique")
        return self

    @model_validator(mode="after")
    def _names_are_unique(self) -> Settings:
        seen: dict[str, str] = {}
        entries: list[tuple[str, ModelEntry | UpstreamEntry]] = [*self.models.items(), *self.upstreams.items()]
        for model_id, entry in entries:
            for name in (model_id, *entry.aliases):
                if not name.strip():
                    raise ValueError(f"models.{model_id}: model names and aliases cannot be empty")
                if name in seen and not (name == model_id and seen[name] == model_id):
                    raise ValueError(f"models.{model_id}: the name '{name}' is already used by '{seen[name]}'")
                seen[name] = model_id
        return self

    def resolve(self, name: str) -> str | None:
        """The configured model id (local or upstream) for a client-sent name or alias."""
        if name in self.models or name in self.upstreams:
            return name
        entries: list[tuple[str, ModelEntry | UpstreamEntry]] = [*self.models.items(), *self.upstreams.items()]
        for model_id, entry in entries:
            if name in entry.aliases:
                return model_id
        return None


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
        resolved[model_id] = entry.model_copy(update={"model": entry.model.model_copy(update={"path": path})})
    if problems:
        raise ConfigError("\n".join(problems))
    gateway = settings.gateway
    if gateway.responses_store is not None:
        store = (base_dir / gateway.responses_store.expanduser()).resolve()
        gateway = gateway.model_copy(update={"responses_store": store})
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
