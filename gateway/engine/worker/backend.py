"""What the worker's batch loop needs from llama.cpp, as a narrow interface.

`engine/llamacpp.py` implements it over llama.cpp's low-level API (one context, a unified KV pool
shared by every sequence, C sampler chains); `testing/fakellama.py` implements it in plain Python so
the real batch loop runs in the fast test tier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


def without_amx(llama_cpp: Any) -> bool:
    """Whether weights must stay out of llama.cpp's extra CPU buffer types (AMX, repacked): its AMX
    kernels crash the worker (SIGSEGV in ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36) on the
    Xeons with AMX this project's machines and CI run on, at the first prompt of every model. A CPU
    backend built without AMX keeps them (repacking speeds up some quantizations)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


ALL_LAYERS = 0x7FFFFFFF  # what llama-cpp-python's own Llama() passes for -1


@contextlib.contextmanager
def plain_weight_buffers(llama_cpp: Any) -> Iterator[None]:
    """For `llama_cpp.Llama`, which takes no `use_extra_bufts`: while it loads, the model defaults it
    starts from keep the weights in plain buffers where `without_amx` says so."""
    low = llama_cpp.llama_cpp
    original = low.llama_model_default_params
    if not without_amx(llama_cpp):
        yield
        return

    def plain() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = plain
    try:
        yield
    finally:
        low.llama_model_default_params = original


def device_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's device arguments for a load: the scheduler's placement for the GPUs the worker sees
    (n_gpu_layers, main_gpu, tensor_split), else the configured n_gpu_layers. A negative layer count
    ("all") becomes INT32_MAX: current llama.h reads any negative value as all layers, but older
    builds computed the first offloaded layer as `n_layer + 1 - n_gpu_layers` and so offloaded none."""
    arguments = {"n_gpu_layers": config["n_gpu_layers"], **(config.get("placement") or {})}
    if arguments["n_gpu_layers"] < 0:
        arguments["n_gpu_layers"] = ALL_LAYERS
    return arguments


def cache_type_arguments(llama_cpp: Any, config: dict[str, Any]) -> dict[str, int]:
    """llama.cpp's KV cache types for a load (its context params `type_k`, `type_v`): ggml types."""
    ggml = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
    return {"type_k": ggml[config.get("cache_type_k", "f16")], "type_v": ggml[config.get("cache_type_v", "f16")]}


def flash_attn_type(llama_cpp: Any, config: dict[str, Any]) -> int:
    """llama.cpp's flash attention setting for a load (`model.flash_attn`: auto, on, off)."""
    types: dict[str, int] = {
        "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
        "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }
    return types[config.get("flash_attn", "auto")]


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float] | None = None
    grammar: Any = None  # what `Backend.grammar` compiled: the sampled tokens must follow it


class Sampler(Protocol):
    def sample(self, row: int, free: bool = False, opens: Callable[[int], bool] | None = None) -> int:
        """Choose (and accept) the next token from the logits of batch row `row` of the last decode;
        `free`: the grammar does not apply to this token (a reasoning model's thinking); `opens`:
        where the model may open its own thinking before a constrained answer, a first pick the
        grammar refuses is taken freely (the grammar consumes nothing) when `opens` says it begins
        the block, else the pick is discarded (accepted by nothing) and the grammar's mask decides."""

    def accept_prompt(self, tokens: Sequence[int]) -> None:
        """Feed the prompt's tail to the repetition penalties."""


@dataclass(frozen=True)
class Row:
    """One token of a batch: `logits` when the sampler will read this row."""

    token: int
    pos: int
    seq: int
    logits: bool


class Backend(Protocol):
    n_ctx: int  # context per request (positions 0..n_ctx-1)
    kv_cells: int  # the shared KV pool
    n_batch: int  # tokens per decode
    n_vocab: int
    max_sequences: int  # sequence ids 0..max_sequences-1

    def tokenize(self, text: str, add_bos: bool) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str:
        """Text of the tokens, special ones included."""

    def grammar(self, constraint: dict[str, Any] | None) -> Any:
        """What a sequence's sampler enforces for a constraint spec, or None (raises the client's 400)."""

    def piece(self, token: int) -> bytes:
        """The token's text (special tokens render as nothing)."""

    def is_eog(self, token: int) -> bool: ...

    def decode(self, rows: Sequence[Row]) -> int:
        """Evaluate one batch: 0 on success, 1 when the KV pool had no room, <0 on error."""

    def decode_embeddings(self, embd: Any, pos: int, seq: int, non_causal: bool) -> int:
        """Evaluate an image's embeddings (n_tokens x n_embd) into `seq` from `pos` (no logits; the
        last decode's logits are lost): 0 on success, as `decode`."""

    def logits(self, row: int) -> Any:
        """The last decode's logits for batch row `row` (a float array of n_vocab)."""

    def seq_rm(self, seq: int, p0: int, p1: int) -> None: ...

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    def seq_length(self, seq: int) -> int:
        """Cells `seq` holds: positions 0..n-1 (a sequence's cells always start at 0 here)."""

    def seq_state(self, seq: int) -> bytes:
        """The sequence's KV cells as llama.cpp serialises them (llama_state_seq_get_data)."""

    def set_seq_state(self, seq: int, state: bytes) -> bool:
        """Load `seq_state` bytes into the empty sequence `seq`; False (and `seq` left empty) when
        llama.cpp refuses them or finds no room."""

    def sampler(self, settings: SamplerSettings, seed: int) -> Sampler: ...
