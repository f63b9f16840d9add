"""What a stored prefix's KV cells depend on besides its tokens: the model file and the load settings
that change what a cell holds. Two loads with equal keys produce the same cells for the same tokens.

In the key: the model file (resolved path, size, modification time and a digest of its first MiB,
which holds the GGUF header and metadata: architecture, RoPE parameters, vocabulary), its vision
projector's file likewise (an image's cells are its embeddings; the tokens hold the image's digest
in its placeholders, engine/worker/media.py), the KV cache
types (the cells' format), flash attention (llama.cpp stores V transposed without it), the GPU layers
(which device computed the cells: their values differ in the last bits from the CPU's), and the
llama.cpp build (its state format). Left out: n_ctx, parallel and n_batch size the pool or split the
work (flash attention gives a sequence the same cells however its prompt was split,
tests/real/test_real_kv_cells.py); RoPE has no setting in models.yaml, so the file decides it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

FORMAT = 1  # this module's file format (files.py); a new one never reads an old file
_HEAD = 2**20


def file_identity(name: str) -> dict[str, Any] | None:
    """A file as the key names it: resolved path, size, modification time, digest of its first MiB."""
    path = os.path.realpath(name)
    try:
        stat = os.stat(path)
        with open(path, "rb") as file:
            head = hashlib.sha256(file.read(_HEAD)).hexdigest()
    except OSError:
        return None
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head}


def model_key(config: dict[str, Any], llama_build: str) -> bytes | None:
    """The key of a worker's load (`config`: what launch.worker_config sends), as canonical JSON
    bytes; None when the model file (or its projector) cannot be read: nothing is stored for it then."""
    model = file_identity(str(config["path"]))
    projector = file_identity(str(config["mmproj"])) if config.get("mmproj") else None
    if model is None or (config.get("mmproj") and projector is None):
        return None
    placement = config.get("placement") or {}
    layers = int(placement.get("n_gpu_layers", config.get("n_gpu_layers", 0)))
    fields = {
        "format": FORMAT,
        "model": model,
        "mmproj": projector,
        "cache_type_k": config.get("cache_type_k", "f16"),
        "cache_type_v": config.get("cache_type_v", "f16"),
        "flash_attn": config.get("flash_attn", "auto"),
        "gpu_layers": "all" if layers < 0 or layers >= 0x7FFFFFFF else layers,
        "llama": llama_build,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def key_digest(key: bytes) -> str:
    """The first part of a stored file's name: a model's files are found without reading the others."""
    return hashlib.sha256(key).hexdigest()[:16]
