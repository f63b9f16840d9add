"""Memory estimates from GGUF metadata, measured worker memory, and the budget.

An estimate stands in for a model's size until its worker has loaded and its resident memory can be
measured. It counts what the worker process will hold: the interpreter with llama.cpp imported, the
weights, the KV cache for the configured context, and llama.cpp's compute buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from gateway import pools
from gateway.config import ModelEntry, Settings
from gateway.errors import ConfigError
from gateway.gguf_header import GGUFFormatError, read_gguf_info
from gateway.gguf_info import GGUFInfo
from gateway.hostmem import host_memory_total

# Resident memory of a worker with llama_cpp imported and no model loaded (measured: 57 MiB).
WORKER_BASELINE_BYTES = 57 * 2**20
# What a loaded model holds beyond weights and KV cache: compute buffers and the vocabulary's tables.
# Fitted on CPU to SmolLM2 (49k vocab, +27 MiB) and Gemma-3 (262k vocab, +69 MiB) at several n_ctx.
COMPUTE_BASE_BYTES = 17 * 2**20
BYTES_PER_VOCAB_TOKEN = 200
KV_CACHE_TYPE_BYTES = 2  # f16, llama.cpp's default cache type
AUTO_BUDGET_FRACTION = 0.8


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate(info: GGUFInfo, n_ctx: int, parallel: int = 1, output_rows: int = 0) -> Estimate:
    """`parallel` requests decode together, each with up to `n_ctx` tokens: the KV pool holds them all.
    `output_rows`: tokens of one batch whose outputs llama.cpp keeps (an embedding model: every token
    of an input, see `output_rows`), each a row of logits and one of the embedding, in f32."""
    return Estimate(
        weights=info.tensor_bytes,
        kv_cache=n_ctx * parallel * info.kv_bytes_per_token(KV_CACHE_TYPE_BYTES),
        overhead=WORKER_BASELINE_BYTES
        + COMPUTE_BASE_BYTES
        + BYTES_PER_VOCAB_TOKEN * info.vocab_size
        + output_rows * (info.vocab_size + info.embedding_length) * 4,
    )


def output_rows(entry: ModelEntry) -> int:
    """An embedding worker decodes an input in one batch of up to n_ctx tokens, each an output: llama.cpp's
    output buffer grows to that many rows on the first long input (measured: 48.6 MiB at load, 97 MiB
    after a 512-token input, for SmolLM2 at n_ctx 512). A generation worker's is a few rows."""
    return entry.model.n_ctx if entry.embedding else 0


@dataclass(frozen=True)
class ModelFacts:
    """What the gateway knows about a configured model before loading it."""

    info: GGUFInfo
    estimate: Estimate

    @property
    def has_chat_template(self) -> bool:
        return self.info.has_chat_template


def inspect_model(entry: ModelEntry) -> ModelFacts:
    info = read_gguf_info(entry.model.path)
    return ModelFacts(info=info, estimate=estimate(info, entry.model.n_ctx, entry.runtime.parallel, output_rows(entry)))


def inspect_models(settings: Settings) -> dict[str, ModelFacts]:
    """Read every model's GGUF header; an unreadable file is a configuration error."""
    facts: dict[str, ModelFacts] = {}
    problems = []
    for model_id, entry in settings.models.items():
        try:
            facts[model_id] = inspect_model(entry)
        except (OSError, GGUFFormatError) as exc:
            problems.append(f"models.{model_id}.model.path: cannot read GGUF {entry.model.path}: {exc}")
            continue
        if entry.embedding and entry.model.pooling is None and not facts[model_id].info.pools_embeddings:
            problems.append(
                f"models.{model_id}: embedding is true, but {entry.model.path.name} names no pooling type "
                "(a causal LM has none), so llama.cpp would give no vector per input; "
                "set model.pooling: mean (or cls, last)"
            )
    if problems:
        raise ConfigError("\n".join(problems))
    return facts


def resolve_budget(configured: int | None) -> int:
    """The budget in bytes; `None` (auto) is a share of the memory this process may use (physical
    memory, or a cgroup's limit below it)."""
    if configured is not None:
        return configured
    return int(host_memory_total() * AUTO_BUDGET_FRACTION)


def host_budget(settings: Settings) -> int:
    """The host pool's budget: gateway.budgets.host, else memory_budget, else 80% of the memory this
    process may use (physical, or a cgroup's limit below it)."""
    gateway = settings.gateway
    if "host" not in gateway.budgets:
        return resolve_budget(gateway.memory_budget)
    return pools.host_budget(gateway.budgets, gateway.memory_budget, host_memory_total())


def process_rss(pid: int) -> int | None:
    """Resident memory of a process, or None when it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
