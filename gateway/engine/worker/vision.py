"""A model's vision projector (`model.mmproj`) loaded with libmtmd beside the text model, so the
worker holds it (and its measured memory counts it) from the load on; and what it does for a
request: tokenize a rendered prompt whose images are media markers (`tokenize`), encode an image
into embeddings when the batch reaches it (`ImageChunk.encode`). Runs in the worker process."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from gateway.engine.base import MEDIA_MARKER
from gateway.engine.worker.backend import device_arguments
from gateway.engine.worker.media import ImageChunk, unsupported
from gateway.errors import invalid_request


class _Chunks:
    """libmtmd's tokenized input, freed with the last image of it still to be encoded."""

    def __init__(self, mtmd: Any, chunks: Any) -> None:
        self._mtmd = mtmd
        self.ptr = chunks

    def __del__(self) -> None:
        if self.ptr:
            self._mtmd.mtmd_input_chunks_free(self.ptr)
            self.ptr = None


class Projector:
    def __init__(self, path: str, text_model: Any, n_threads: int, use_gpu: bool) -> None:
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self._mtmd = mtmd_cpp
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu  # where the model offloads, its projector goes to the GPU too
        params.print_timings = False
        if n_threads:
            params.n_threads = n_threads
        self._ctx = mtmd_cpp.mtmd_init_from_file(path.encode(), text_model, params)
        if not self._ctx:
            raise ValueError(f"libmtmd could not load the vision projector {path} for this model")
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise ValueError(f"the projector {path} has no vision encoder")
        self.n_embd = int(llama_cpp.llama_model_n_embd_inp(text_model))  # what each image row carries
        self.mrope = bool(mtmd_cpp.mtmd_decode_use_mrope(self._ctx))

    def tokenize(self, text: str, add_special: bool, images: Sequence[dict[str, Any]]) -> list[list[int] | ImageChunk]:
        """The prompt's text tokens and image chunks, in order; the images are the markers' pixels."""
        mtmd = self._mtmd
        if self.mrope:  # M-RoPE positions (Qwen-VL) are 3-D: the batch's rows carry one position each
            raise unsupported(
                "its projector needs M-RoPE positions (Qwen2-VL style), which this gateway does not batch."
            )
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * len(images))()
        made = []
        try:
            for i, image in enumerate(images):
                pixels = image["rgb"]
                if len(pixels) != image["width"] * image["height"] * 3 or not pixels:  # libmtmd reads w x h x 3
                    raise invalid_request("An image's pixels do not match its size.", "messages")
                data = (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels)
                bitmap = mtmd.mtmd_bitmap_init(image["width"], image["height"], data)
                if not bitmap:
                    raise invalid_request("An image could not be handed to the projector.", "messages")
                made.append(bitmap)
                mtmd.mtmd_bitmap_set_id(bitmap, image["digest"].encode())
                bitmaps[i] = bitmap
            encoded = text.encode("utf-8")
            prompt = mtmd.mtmd_input_text(encoded, len(encoded), add_special, True)
            chunks = _Chunks(mtmd, mtmd.mtmd_input_chunks_init())
            status = mtmd.mtmd_tokenize(self._ctx, chunks.ptr, ctypes.byref(prompt), bitmaps, len(images))
        finally:
            for bitmap in made:
                mtmd.mtmd_bitmap_free(bitmap)
        if status == 1:
            raise invalid_request(
                f"The messages' text contains libmtmd's media marker {MEDIA_MARKER!r}; remove it from the text.",
                "messages",
            )
        if status != 0:
            raise invalid_request(f"The projector could not prepare the images (libmtmd status {status}).", "messages")
        return [self._piece(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks.ptr))]

    def _piece(self, chunks: _Chunks, index: int) -> list[int] | ImageChunk:
        mtmd = self._mtmd
        chunk = mtmd.mtmd_input_chunks_get(chunks.ptr, index)
        kind = mtmd.mtmd_input_chunk_get_type(chunk)
        if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t()
            tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
            return [int(tokens[i]) for i in range(count.value)]
        if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            raise unsupported("libmtmd made a non-image media chunk of it.")
        n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        if int(mtmd.mtmd_input_chunk_get_n_pos(chunk)) != n_tokens:
            raise unsupported("its images take a different number of positions than of tokens.")
        non_causal = bool(mtmd.mtmd_decode_use_non_causal(self._ctx, chunk))

        def encode() -> Any:
            return self._encode(chunks, chunk, n_tokens)

        return ImageChunk(n_tokens, non_causal, encode)

    def _encode(self, chunks: _Chunks, chunk: Any, n_tokens: int) -> Any:
        """The image's embeddings (`chunks` is an argument so that it lives until then)."""
        import numpy as np

        assert chunks.ptr
        status = self._mtmd.mtmd_encode_chunk(self._ctx, chunk)
        if status != 0:
            raise RuntimeError(f"mtmd_encode_chunk failed with status {status}")
        output = self._mtmd.mtmd_get_output_embd(self._ctx)
        rows = np.ctypeslib.as_array(output, shape=(n_tokens * self.n_embd,))
        return rows.reshape(n_tokens, self.n_embd).astype(np.float32, copy=True)

    def close(self) -> None:
        if self._ctx:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()


def load_projector(config: dict[str, Any], text_model: Any) -> Projector | None:
    path = config.get("mmproj")
    if not path:
        return None
    on_gpu = device_arguments(config)["n_gpu_layers"] != 0  # the scheduler's placement, else the configured layers
    return Projector(path, text_model, int(config.get("n_threads") or 0), on_gpu)
