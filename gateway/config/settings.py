"""The whole document: the gateway section (budgets, queues, keys, logging) and every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gateway.config.model import ModelEntry
from gateway.config.remote import UpstreamEntry
from gateway.config.values import POOL_NAME, Budget, ByteSize, Duration, Placement, PoolBudget, Section


class Quota(Section):
    """A token budget per calendar period (UTC): prompt + completion tokens, read from the usage ledger."""

    tokens: int = Field(ge=1, description="prompt + completion tokens the key may use per period")
    per: Literal["day", "week", "month"] = Field(description="the period (UTC; weeks start on Monday)")


class ApiKey(Section):
    """A client key. Give the key itself (it may reference an environment variable, `${NAME}`), or its
    sha256 hex digest so the file holds no secret."""

    id: str = Field(min_length=1, description="name for logs and metrics")
    key: str | None = Field(None, min_length=8)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    models: list[str] | None = Field(None, description="models (ids or aliases) this key may use; absent: all")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(
        None, ge=1, description="tokens per minute: prompt + completion (max_tokens reserved until the answer ends)"
    )
    quota: Quota | None = Field(
        None, description="a token budget per day, week or month; over it: 429 insufficient_quota"
    )
    priority: Literal["interactive", "batch"] = Field(
        "interactive",
        description="interactive requests get turns before batch ones, and may pause (preempt) a running batch "
        "request; a request may lower its own with service_tier 'flex'",
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="requests of this key running at once over all models; more wait their turn"
    )

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'key' and 'sha256'")
        return self


class ImageFetch(Section):
    """Remote image URLs the gateway may fetch (none unless set: a server-side request forgery hole)."""

    allow: list[str] = Field(
        min_length=1,
        description="host patterns (images.example.com, *.example.com); a private or loopback address is "
        "fetched only when named exactly, never through a wildcard",
    )
    max_bytes: ByteSize = Field(10 * 2**20, description="larger downloads are a 400")
    timeout: Duration = Field(10.0, description="the whole download, connection included")


class GatewaySection(Section):
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
    batch_aging: float = Field(
        30.0, gt=0, description="seconds after which a waiting batch request is served as if interactive"
    )
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
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = Field(
        "reasoning_content",
        description="the chat message field that carries a reasoning model's thinking (vLLM >= 0.16 reads "
        "'reasoning'; most clients 'reasoning_content')",
    )
    api_keys: list[ApiKey] = Field(default_factory=list, description="absent or empty: no authentication")
    admin_key: str | None = Field(None, min_length=8, description="guards /admin; may reference ${NAME}")
    admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; default none")
    max_body_bytes: ByteSize = Field(8 * 2**20, description="larger request bodies get 413")
    image_fetch: ImageFetch | None = Field(
        None, description="remote image URLs the gateway may fetch; null: only inline (base64 data URL) images"
    )
    access_log: str | None = Field("stderr", description="'stderr', a file path, or null for none")
    log_content: bool = Field(False, description="include prompts and outputs in access logs")
    console: bool = Field(True, description="serve the browser console at /ui/ (and redirect / there)")
    spare_workers: int = Field(
        1, ge=0, le=4, description="workers started ahead of need (llama.cpp imported, no model) to cut cold starts"
    )
    store: str | None = Field(
        "state.db",
        description="where the usage ledger and stored /v1/responses live: a sqlite file (relative to this file) or "
        "postgresql://... (shared by replicas); null: in memory, lost on restart",
    )
    shared_limits: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="redis://... holding rate, quota and concurrency counters, so replicas enforce one limit; "
        "null: per replica",
    )
    shared_limits_lease: float = Field(
        15.0,
        gt=0,
        description="seconds a replica's count of a running request (max_concurrent) outlives its last heartbeat "
        "in shared_limits: how soon the requests of a replica that died stop counting",
    )
    shared_limits_prefix: str = Field(
        "gateway", min_length=1, description="prefix of the Redis keys, so deployments can share one Redis"
    )
    usage_spill_max: int = Field(
        100_000, ge=1, description="usage rows kept in memory while the store is unreachable (replayed when it returns)"
    )
    usage_spill_file: Path | None = Field(
        None,
        description="file (relative to this file) keeping usage rows the store refused at exit, written at the next "
        "start; null: they are lost",
    )
    responses_store: Path | None = Field(
        None,
        description="deprecated: a sqlite file (relative to this file) of its own for stored /v1/responses; "
        "null: they live in `store`",
    )
    responses_store_max: int = Field(
        1000, ge=1, description="stored /v1/responses kept for previous_response_id; the oldest go first"
    )

    @model_validator(mode="after")
    def _pools_are_named(self) -> GatewaySection:
        bad = [name for name in self.budgets if not POOL_NAME.match(name)]
        if bad:
            raise ValueError(f"budgets: {bad}: pools are host, gpu, cuda0, cuda1, ..., rocm0, ... or a GPU UUID")
        if "host" in self.budgets and self.memory_budget is not None:
            raise ValueError("budgets.host and memory_budget both set the host budget: give one")
        return self


class Settings(Section):
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
