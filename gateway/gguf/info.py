"""What the gateway knows of a model from its GGUF header: the architecture's metadata, the tensor
bytes by where llama.cpp places them, and what follows from them (context length, vocabulary size,
KV cache bytes per token and layer). Read by `header.read_gguf_info`, without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import LlamaFileType


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_bytes: int
    architecture: str
    metadata: dict[str, Any] = field(repr=False)
    tensor_bytes: int
    tensor_count: int
    array_lengths: dict[str, int] = field(default_factory=dict, repr=False)  # arrays skipped, not decoded
    # Tensor bytes by where llama.cpp places them: repeating blocks (`blk.N.*`) by layer, the input
    # embedding (always on the CPU), and the output head (offloaded with the last "layer").
    layer_bytes: tuple[int, ...] = ()
    input_bytes: int = 0
    output_bytes: int = 0
    has_output_tensor: bool = False  # False: the head is tied to token_embd and copied where the head runs

    @property
    def block_count(self) -> int:
        return int(self.metadata.get(f"{self.architecture}.block_count", 0))

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def embedding_length(self) -> int:
        return int(self.metadata.get(f"{self.architecture}.embedding_length", 0))

    @property
    def head_count(self) -> int:
        heads = self.metadata.get(f"{self.architecture}.attention.head_count", 0)
        return int(max(heads) if isinstance(heads, list) and heads else heads or 0)

    @property
    def feed_forward_length(self) -> int:
        value = self.metadata.get(f"{self.architecture}.feed_forward_length", 0)
        return int(max(value) if isinstance(value, list) and value else value or 0)

    @property
    def vocab_size(self) -> int:
        declared = self.metadata.get(f"{self.architecture}.vocab_size")
        return int(declared) if declared is not None else self.array_lengths.get("tokenizer.ggml.tokens", 0)

    @property
    def pools_embeddings(self) -> bool:
        """The GGUF names a pooling type other than none (0), as embedding models' files do."""
        value = self.metadata.get(f"{self.architecture}.pooling_type")
        return value is not None and int(value) > 0

    @property
    def has_chat_template(self) -> bool:
        return bool(self.metadata.get("tokenizer.chat_template"))

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if file_type is None:
            return "unknown"
        try:
            return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            return f"file_type {file_type}"

    @property
    def query_width(self) -> int:
        """Values of one token's attention queries: heads x key length (Gemma's exceed n_embd)."""
        key_length = self.metadata.get(f"{self.architecture}.attention.key_length")
        if key_length is None or not self.head_count:
            return self.embedding_length
        return self.head_count * int(key_length)

    def kv_bytes_per_token(self, cache_type_bytes: int = 2) -> int:
        """Bytes of K and V cache one token of context costs across all layers (f16: 2 bytes a value)."""
        return sum(self.kv_bytes_per_layer(cache_type_bytes))

    def kv_bytes_per_layer(self, cache_type_bytes: int = 2) -> list[int]:
        """Bytes of K and V cache one token of context costs in each layer (`memory.estimate` counts
        the quantized cache types)."""
        return [(k + v) * cache_type_bytes for k, v in self.kv_values_per_layer()]

    @property
    def head_dims(self) -> tuple[int, int]:
        """Values per attention head of a key and of a value."""
        arch = self.architecture
        heads = self.metadata.get(f"{arch}.attention.head_count", 0)
        embedding = int(self.metadata.get(f"{arch}.embedding_length", 0))
        first_heads = heads[0] if isinstance(heads, list) and heads else heads
        head_dim = embedding // int(first_heads) if first_heads else 0
        key_length = int(self.metadata.get(f"{arch}.attention.key_length", head_dim))
        value_length = int(self.metadata.get(f"{arch}.attention.value_length", head_dim))
        return key_length, value_length

    def kv_values_per_layer(self) -> list[tuple[int, int]]:
        """Values of K and of V one token of context holds in each layer."""
        arch = self.architecture
        layers = self.block_count
        heads = self.metadata.get(f"{arch}.attention.head_count", 0)
        heads_kv = self.metadata.get(f"{arch}.attention.head_count_kv", heads)
        key_length, value_length = self.head_dims
        per_layer_kv = heads_kv if isinstance(heads_kv, list) else [heads_kv] * layers
        return [(int(n) * key_length, int(n) * value_length) for n in per_layer_kv[:layers]]
