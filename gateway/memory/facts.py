"""What the gateway knows of each configured model before loading it: its GGUF header and memory
estimate, read once per configuration; a model that cannot be served as configured is a
configuration error."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.config import ModelEntry, Settings
from gateway.engine import chatformats
from gateway.engine.sizing import cache_block
from gateway.errors import ConfigError
from gateway.gguf.draft import draft_problem
from gateway.gguf.header import GGUFFormatError, read_gguf_info
from gateway.gguf.info import GGUFInfo
from gateway.gguf.projector import projector_problem
from gateway.memory.estimate import Estimate, after_load_bytes, cache_types, draft_estimate, estimate, output_rows


@dataclass(frozen=True)
class ModelFacts:
    """What the gateway knows about a configured model before loading it."""

    info: GGUFInfo
    estimate: Estimate
    projector: GGUFInfo | None = None  # model.mmproj's header: the model reads images
    draft: GGUFInfo | None = None  # model.speculative.draft's header

    @property
    def has_chat_template(self) -> bool:
        return self.info.has_chat_template


class ProjectorError(ValueError):
    """model.mmproj names a file that cannot serve this model's images."""


class DraftError(ValueError):
    """model.speculative.draft names a file that cannot draft for this model."""


def inspect_model(entry: ModelEntry) -> ModelFacts:
    info = read_gguf_info(entry.model.path)
    batch = after_load_bytes(info, entry)
    need = estimate(info, entry.model.n_ctx, entry.runtime.parallel, output_rows(entry), batch, cache_types(entry))
    projector = None
    if entry.model.mmproj is not None:
        try:
            projector = read_gguf_info(entry.model.mmproj)
        except (OSError, GGUFFormatError) as exc:
            raise ProjectorError(f"cannot read GGUF {entry.model.mmproj}: {exc}") from None
        problem = projector_problem(info, projector)
        if problem is not None:
            raise ProjectorError(f"{entry.model.mmproj}: {problem}")
        # The worker holds the projector's weights beside the model's (on its GPU where it offloads),
        # and up to `image_cache` bytes of encoded images in its own memory.
        need = replace(
            need, weights=need.weights + projector.tensor_bytes, overhead=need.overhead + entry.model.image_cache
        )
    draft = _draft(entry, info)
    if draft is not None:
        # The worker holds the draft model too: its weights, its own KV pool and its compute.
        extra = draft_estimate(draft, entry)
        need = replace(
            need,
            weights=need.weights + extra.weights,
            kv_cache=need.kv_cache + extra.kv_cache,
            overhead=need.overhead + extra.overhead,
        )
    return ModelFacts(info=info, estimate=need, projector=projector, draft=draft)


def _draft(entry: ModelEntry, info: GGUFInfo) -> GGUFInfo | None:
    speculative = entry.model.speculative
    if speculative is None or speculative.draft is None:
        return None
    try:
        draft = read_gguf_info(speculative.draft.path)
    except (OSError, GGUFFormatError) as exc:
        raise DraftError(f"cannot read GGUF {speculative.draft.path}: {exc}") from None
    problem = draft_problem(info, draft)
    if problem is not None:
        raise DraftError(f"{speculative.draft.path.name}: {problem}")
    return draft


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
        except ProjectorError as exc:
            problems.append(f"models.{model_id}.model.mmproj: {exc}")
            continue
        except DraftError as exc:
            problems.append(f"models.{model_id}.model.speculative.draft: {exc}")
            continue
        if entry.embedding and entry.model.speculative is not None:
            problems.append(f"models.{model_id}.model.speculative: an embedding model generates no tokens; remove it")
        if entry.embedding and entry.model.mmproj is not None:
            problems.append(f"models.{model_id}.model.mmproj: an embedding model reads no images; remove mmproj")
        chat_format = entry.model.chat_format
        if chat_format is not None and chatformats.unknown(chat_format):
            names = ", ".join(sorted(chatformats.known() or ()))
            problems.append(f"models.{model_id}.model.chat_format: unknown format '{chat_format}' (known: {names})")
        problems.extend(_cache_type_problems(model_id, entry, facts[model_id].info))
        if entry.embedding and entry.model.pooling is None and not facts[model_id].info.pools_embeddings:
            problems.append(
                f"models.{model_id}: embedding is true, but {entry.model.path.name} names no pooling type "
                "(a causal LM has none), so llama.cpp would give no vector per input; "
                "set model.pooling: mean (or cls, last)"
            )
    if problems:
        raise ConfigError("\n".join(problems))
    return facts


def _cache_type_problems(model_id: str, entry: ModelEntry, info: GGUFInfo) -> list[str]:
    """A quantized cache stores blocks of 32 values: llama.cpp refuses one whose blocks do not divide
    the model's head size."""
    problems = []
    for name, cache_type, head in zip(("k", "v"), cache_types(entry), info.head_dims, strict=True):
        if head % cache_block(cache_type):
            problems.append(
                f"models.{model_id}.model.cache_type_{name}: {cache_type} stores blocks of {cache_block(cache_type)} "
                f"values, which do not divide {entry.model.path.name}'s head size {head}: use f16"
            )
    return problems
