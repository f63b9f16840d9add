"""The `Backend` over llama.cpp's low-level API: one context whose unified KV pool every sequence
shares, one reusable batch, and a C sampler chain per sequence. Runs in the worker process.

Sampling stays in C (llama_sampler_sample) except for constrained sequences: those sample first and
then check only the chosen token against their llguidance matcher (engine/constraint.py), masking
the logits with every allowed token and sampling again only when it is rejected (llama.cpp's own
order). Computing the full mask at every step would slow every stream in the batch.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

from gateway.engine.sizing import batch_size
from gateway.engine.worker.backend import (
    Row,
    SamplerSettings,
    cache_type_arguments,
    device_arguments,
    flash_attn_type,
    without_amx,
)
from gateway.engine.worker.constraint import Constraints, Grammar, Matcher


def _internals_batch(n_tokens: int, n_embd: int) -> Any:
    from llama_cpp import _internals

    return _internals.LlamaBatch(n_tokens=n_tokens, embd=n_embd, n_seq_max=1, verbose=False)


class LlamaCpp:
    def __init__(self, config: dict[str, Any], slots: int, max_sequences: int) -> None:
        import llama_cpp
        from llama_cpp import _internals, _logger

        _logger.set_verbose(bool(config["verbose"]))
        self._lib = llama_cpp
        model_params = llama_cpp.llama_model_default_params()
        devices = device_arguments(config)
        model_params.n_gpu_layers = devices["n_gpu_layers"]
        if "main_gpu" in devices:
            model_params.main_gpu = devices["main_gpu"]
        if devices.get("tensor_split"):
            # Kept on self: llama.cpp reads the array through a pointer while it loads.
            self._tensor_split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*devices["tensor_split"])
            model_params.tensor_split = self._tensor_split
        model_params.use_mmap = config["use_mmap"]
        if without_amx(llama_cpp):
            model_params.use_extra_bufts = False
        self._model = _internals.LlamaModel(
            path_model=config["path"], params=model_params, verbose=bool(config["verbose"])
        )
        self.n_ctx = int(config["n_ctx"])
        self.n_batch = batch_size(int(config["n_batch"]), self.n_ctx * slots, max_sequences)
        self.max_sequences = max_sequences
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx * slots  # each request may use n_ctx; all share the pool
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = max_sequences
        params.kv_unified = True  # one pool: a prefix copied between sequences costs no cells
        params.no_perf = True
        # Flash attention stays llama.cpp's choice ("auto": on where the device supports it). It is ~8%
        # faster per token on CPU and, unlike the plain path, gives a sequence exactly the same logits
        # whether or not other sequences' cells lie below its own (tests/real/test_real_kv_cells.py).
        params.flash_attn_type = flash_attn_type(llama_cpp, config)
        for name, ggml_type in cache_type_arguments(llama_cpp, config).items():
            setattr(params, name, ggml_type)  # a quantized V turns "auto" flash attention on
        if config["n_threads"]:
            params.n_threads = params.n_threads_batch = config["n_threads"]
        self._context = _internals.LlamaContext(model=self._model, params=params, verbose=bool(config["verbose"]))
        self._ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.kv_cells = int(llama_cpp.llama_n_ctx(self._ctx))
        self._vocab = self._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._embd_batch: Any = None  # for images' embeddings, made at the first one
        self._constraints = Constraints(self._vocab)  # grammars compiled once per schema
        self._pieces: dict[int, bytes] = {}
        self.special_pieces = False  # pieces of control tokens as text (set at load for gpt-oss)
        self.projector: Any = None  # model.mmproj's libmtmd context (vision.py), set at load
        self._eog: dict[int, bool] = {}

    # -- the model's text side ------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """llama-cpp-python's model wrapper (metadata, special tokens) for the chat template."""
        return self._model

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def detokenize(self, tokens: list[int]) -> str:
        return bytes(self._model.detokenize(tokens, special=True)).decode("utf-8", errors="replace")

    def grammar(self, constraint: dict[str, Any] | None) -> Grammar | None:
        return self._constraints.compile(constraint)

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(256)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, 256, 0, self.special_pieces)
            piece = self._pieces[token] = bytes(buffer.raw[: max(n, 0)])
        return piece

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return eog

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, rows: Sequence[Row]) -> int:
        raw = self._batch.batch
        for i, row in enumerate(rows):
            raw.token[i] = row.token
            raw.pos[i] = row.pos
            raw.n_seq_id[i] = 1
            raw.seq_id[i][0] = row.seq
            raw.logits[i] = row.logits
        raw.n_tokens = len(rows)
        return int(self._lib.llama_decode(self._ctx, raw))  # releases the GIL while it computes

    def decode_embeddings(self, embd: Any, pos: int, seq: int, non_causal: bool) -> int:
        """An image's embeddings (n_tokens x n_embd float32) into `seq`'s cells from `pos`, in decodes of
        their own (no logits); attended all at once where the projector says so (one decode: the
        batch checked that it fits)."""
        import numpy as np

        lib = self._lib
        if self._embd_batch is None:
            self._embd_batch = _internals_batch(self.n_batch, int(embd.shape[1]))
        raw = self._embd_batch.batch
        rows = np.ascontiguousarray(embd, dtype=np.float32)
        for start in range(0, len(rows), self.n_batch):
            part = rows[start : start + self.n_batch]
            ctypes.memmove(raw.embd, part.ctypes.data, part.nbytes)
            for i in range(len(part)):
                raw.pos[i] = pos + start + i
                raw.n_seq_id[i] = 1
                raw.seq_id[i][0] = seq
                raw.logits[i] = False
            raw.n_tokens = len(part)
            if non_causal:
                lib.llama_set_causal_attn(self._ctx, False)
            try:
                status = int(lib.llama_decode(self._ctx, raw))
            finally:
                if non_causal:
                    lib.llama_set_causal_attn(self._ctx, True)
            if status != 0:
                return status
        return 0

    def logits(self, row: int) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,))

    def seq_rm(self, seq: int, p0: int, p1: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self._lib.llama_memory_seq_cp(self._memory, src, dst, p0, p1)

    def seq_length(self, seq: int) -> int:
        return int(self._lib.llama_memory_seq_pos_max(self._memory, seq)) + 1

    def seq_state(self, seq: int) -> bytes:
        lib = self._lib
        size = int(lib.llama_state_seq_get_size(self._ctx, seq))
        buffer = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self._ctx, buffer, size, seq))
        return ctypes.string_at(buffer, written)

    def set_seq_state(self, seq: int, state: bytes) -> bool:
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if int(self._lib.llama_state_seq_set_data(self._ctx, buffer, len(state), seq)) > 0:
            return True
        self.seq_rm(seq, 0, -1)  # llama.cpp clears it on a failed read; said again, in case
        return False

    def sampler(self, settings: SamplerSettings, seed: int) -> ChainSampler:
        return ChainSampler(self, settings, seed)


class ChainSampler:
    """One sequence's sampler: a C chain (bias, penalties, top-k, top-p, min-p, temperature, seeded
    draw) and, for constrained output, a grammar checked against the chosen token."""

    def __init__(self, backend: LlamaCpp, settings: SamplerSettings, seed: int) -> None:
        lib = self._lib = backend._lib
        self._backend = backend
        self._ctx = backend._ctx
        chain = self._chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if settings.logit_bias:
            biases = (lib.llama_logit_bias * len(settings.logit_bias))(
                *(lib.llama_logit_bias(token, bias) for token, bias in settings.logit_bias.items())
            )
            lib.llama_sampler_chain_add(
                chain, lib.llama_sampler_init_logit_bias(backend.n_vocab, len(settings.logit_bias), biases)
            )
        self._penalised = settings.repeat_last_n != 0 and (
            settings.repeat_penalty != 1.0 or settings.presence_penalty != 0.0 or settings.frequency_penalty != 0.0
        )
        self._last_n = settings.repeat_last_n
        if self._penalised:
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_penalties(
                    backend.n_vocab,
                    settings.repeat_last_n,
                    settings.repeat_penalty,
                    settings.frequency_penalty,
                    settings.presence_penalty,
                ),
            )
        if settings.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(settings.top_k))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(settings.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(settings.min_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(settings.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        grammar: Grammar | None = settings.grammar
        self.matcher: Matcher | None = grammar.matcher() if grammar is not None else None
        self._candidates: Any = None
        self._ids: Any = None
        self.masked = 0  # tokens the matcher rejected, sampled again under the full mask

    def accept_prompt(self, tokens: Sequence[int]) -> None:
        if self._penalised:
            for token in tokens[-self._last_n if self._last_n > 0 else 0 :]:
                self._lib.llama_sampler_accept(self._chain, token)

    def sample(self, row: int, free: bool = False, opens: Callable[[int], bool] | None = None) -> int:
        matcher = self.matcher
        if matcher is None or free:
            return int(self._lib.llama_sampler_sample(self._chain, self._ctx, row))
        logits = self._backend.logits(row)
        token = self._pick(logits)  # picked, not accepted: only the token kept is
        if not matcher.try_consume(token):
            if opens is not None and opens(token):  # it begins the thinking: no part of the answer
                self._lib.llama_sampler_accept(self._chain, token)
                return token
            self.masked += 1
            allowed = logits.copy()  # llama.cpp's buffer stays as it is, for log probabilities
            matcher.apply(allowed)
            token = self._pick(allowed)
            matcher.consume(token)
        self._lib.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, logits: Any) -> int:
        import numpy as np

        lib = self._lib
        if self._candidates is None:  # reused: the chain sorts and cuts it in place, so it is refilled
            self._candidates = np.zeros(len(logits), dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
            self._ids = np.arange(len(logits), dtype=np.int32)
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = logits
        array = lib.llama_token_data_array(
            candidates.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)), len(logits), -1, False
        )
        lib.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(candidates["id"][array.selected])

    def close(self) -> None:
        if self._chain:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()
