"""A model's memory estimate from its GGUF metadata and its configuration.

An estimate stands in for a model's size until its worker has loaded and its resident memory can be
measured. It counts what the worker process will hold: the interpreter with llama.cpp imported, the
weights, the KV cache for the configured context, and llama.cpp's compute buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.config import ModelEntry
from gateway.config.values import CacheType
from gateway.engine.sizing import batch_size, cache_row_bytes, sequence_ids
from gateway.gguf.info import GGUFInfo

# Resident memory of a worker with llama_cpp imported and no model loaded (measured: 57 MiB).
WORKER_BASELINE_BYTES = 57 * 2**20
# What a loaded model holds beyond weights, KV cache and a full batch's compute (`batch_bytes`): the
# vocabulary's tables and output rows. Fitted on CPU, with `batch_bytes`, to the peak resident memory
# `gateway check --measure` reads (SmolLM2, 49k vocab; Gemma-3, 262k vocab; several n_ctx).
VOCAB_BASE_BYTES = 4 * 2**20
BYTES_PER_VOCAB_TOKEN = 275
F32 = 4
CONSTRAINT_BYTES_PER_VOCAB_TOKEN = 560
ALLOCATOR_MARGIN = 1.05  # ggml's allocator rounds and aligns the largest tensors of a batch


CacheTypes = tuple[CacheType, CacheType]  # K's, V's
F16_CACHE: CacheTypes = ("f16", "f16")  # llama.cpp's default


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate(
    info: GGUFInfo,
    n_ctx: int,
    parallel: int = 1,
    output_rows: int = 0,
    batch: int = 0,
    cache: CacheTypes = F16_CACHE,
) -> Estimate:
    """`parallel` requests decode together, each with up to `n_ctx` tokens: the KV pool holds them all.
    `output_rows`: tokens of one batch whose outputs llama.cpp keeps (an embedding model: every token
    of an input, see `output_rows`), each a row of logits and one of the embedding, in f32. `batch`:
    what the worker adds after its load (`after_load_bytes`). `cache`: the K and V cache types."""
    return Estimate(
        weights=info.tensor_bytes,
        kv_cache=n_ctx * parallel * sum(kv_bytes_per_layer(info, cache)),
        overhead=WORKER_BASELINE_BYTES
        + VOCAB_BASE_BYTES
        + BYTES_PER_VOCAB_TOKEN * info.vocab_size
        + output_rows * (info.vocab_size + info.embedding_length) * F32
        + batch,
    )


def kv_bytes_per_layer(info: GGUFInfo, cache: CacheTypes = F16_CACHE) -> list[int]:
    """Bytes of K and V cache one token of context costs in each layer, in these cache types (a
    quantized type stores blocks of 32 values: q8_0 34 bytes, q4_0 18, against f16's 64)."""
    k_type, v_type = cache
    return [cache_row_bytes(k_type, k) + cache_row_bytes(v_type, v) for k, v in info.kv_values_per_layer()]


def cache_types(entry: ModelEntry) -> CacheTypes:
    return entry.model.cache_type_k, entry.model.cache_type_v


def batch_bytes(info: GGUFInfo, n_ubatch: int, cells: int, plain_attention: bool, all_outputs: bool) -> int:
    """What the first full batch makes resident of llama.cpp's compute buffer, which is allocated at
    load but whose pages count only once used (so a worker's memory right after load misses it): each
    token's activations; the attention scores over the whole KV pool when attention is not flash
    attention; the logits of every token when every token is an output (embeddings). Scores and
    logits are never live together (ggml reuses the memory). Fitted to the peak resident memory after
    one full batch (`gateway check --measure`): SmolLM2 Q4_1/Q8_0 at n_ctx 512-4096, n_batch 512-1024,
    parallel 1-4, Gemma-3-270M, and embedding SmolLM2 at n_ctx 512 and 2048."""
    activations = n_ubatch * (6 * info.embedding_length + 4 * info.feed_forward_length + 2 * info.query_width) * F32
    scores = n_ubatch * cells * info.head_count * F32 if plain_attention else 0
    logits = n_ubatch * info.vocab_size * F32 if all_outputs else 0
    return int(max(scores, logits) * ALLOCATOR_MARGIN) + activations


def kv_cells(entry: ModelEntry) -> int:
    """KV cache cells the worker allocates: n_ctx per parallel sequence."""
    return entry.model.n_ctx * entry.runtime.parallel


def ubatch(entry: ModelEntry) -> int:
    """Tokens llama.cpp evaluates in one batch, as the worker configures it."""
    if entry.embedding:  # an input is embedded in one batch
        return entry.model.n_ctx
    cells = kv_cells(entry)
    return batch_size(entry.model.n_batch, cells, sequence_ids(entry.runtime.parallel, cells))


def after_load_bytes(info: GGUFInfo, entry: ModelEntry) -> int:
    """What a worker adds after its load: a full batch (`entry_batch_bytes`) and, for a generation
    model, the vocabulary view that constrained decoding builds on the first JSON-schema, json_object or
    tool request (llguidance's token tables; measured +26 MiB for SmolLM2's 49k vocabulary, +117 MiB
    for Gemma-3's 262k)."""
    constrained = 0 if entry.embedding else CONSTRAINT_BYTES_PER_VOCAB_TOKEN * info.vocab_size
    return entry_batch_bytes(info, entry) + constrained


def entry_batch_bytes(info: GGUFInfo, entry: ModelEntry) -> int:
    """`batch_bytes` for a configured model, with the attention path its worker runs ("auto" counts
    as flash attention: llama.cpp turns it on for CPU)."""
    plain = entry.flash_attention == "off"
    return batch_bytes(info, ubatch(entry), kv_cells(entry), plain, entry.embedding)


def output_rows(entry: ModelEntry) -> int:
    """An embedding worker decodes an input in one batch of up to n_ctx tokens, each an output: llama.cpp's
    output buffer grows to that many rows on the first long input (measured: 48.6 MiB at load, 97 MiB
    after a 512-token input, for SmolLM2 at n_ctx 512). A generation worker's is a few rows."""
    return entry.model.n_ctx if entry.embedding else 0


def draft_estimate(draft: GGUFInfo, entry: ModelEntry) -> Estimate:
    """A speculative draft model beside the target, in the same worker: its weights, a KV pool of as
    many cells as the target's (f16), its vocabulary tables and a full batch of compute (it catches up
    on prompts in batches of the target's size). The worker's baseline is counted once, with the target."""
    cells = kv_cells(entry)
    compute = batch_bytes(draft, ubatch(entry), cells, entry.flash_attention == "off", False)
    full = estimate(draft, cells, batch=compute)
    return replace(full, overhead=full.overhead - WORKER_BASELINE_BYTES)
