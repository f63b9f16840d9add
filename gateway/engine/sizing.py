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
