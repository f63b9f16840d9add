"""How big a worker's llama.cpp context is made: sequence ids and batch size for a pool of KV cells.
Both sides need it: the worker to load, the gateway to estimate the memory that load takes."""

from __future__ import annotations

MAX_SEQUENCES = 16  # protocol.MAX_CHOICES: n choices of one request


def sequence_ids(slots: int, cells: int) -> int:
    """Sequence ids a worker asks llama.cpp for (`n_seq_max`): n choices per slot, and finished
    requests' sequences kept for prefix reuse; no more than the pool's cells (llama.cpp caps its
    batch there, and needs a batch row per id)."""
    return min(256, 2 * slots + MAX_SEQUENCES, cells)


def batch_size(n_batch: int, cells: int, sequences: int) -> int:
    """The batch a worker evaluates: the configured one, no larger than the pool, and never smaller
    than the sequence ids, because llama.cpp reserves an output row per id at load and aborts
    (GGML_ASSERT n_outputs_max) when the batch holds fewer (n_batch 8 once killed every load)."""
    return max(sequences, min(n_batch, cells))


# Bytes per block of values and values per block of llama.cpp's KV cache types (ggml's type traits):
# f16 2 bytes a value; q8_0 32 int8 and an f16 scale; q4_0 32 nibbles and an f16 scale.
CACHE_TYPE_BLOCKS: dict[str, tuple[int, int]] = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}


def cache_block(cache_type: str) -> int:
    """Values per block: a quantized cache needs each head's size to be a multiple (llama.cpp refuses it otherwise)."""
    return CACHE_TYPE_BLOCKS[cache_type][1]


def cache_row_bytes(cache_type: str, values: int) -> int:
    """Bytes one token's `values` of K (or V) take in one layer, as ggml_row_size counts them."""
    size, block = CACHE_TYPE_BLOCKS[cache_type]
    return -(-values // block) * size
