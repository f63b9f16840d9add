"""Loading a generation model inside the worker: llama.cpp's backend and the chat renderer over its
guarded tokenizer; and what this llama.cpp build can run on (for `gateway check`)."""

from __future__ import annotations

from typing import Any

from gateway.engine.reasoning import format_for
from gateway.engine.sizing import sequence_ids
from gateway.engine.worker.backend import Backend
from gateway.engine.worker.guard import Tokenizer, nonempty_prompt, too_long_to_tokenize
from gateway.engine.worker.media import ImageSpan, image_prompt
from gateway.engine.worker.prompt import Render, TokenizeImages, formatter, renderer
from gateway.engine.worker.speculation import Speculation
from gateway.engine.worker.vision import Projector, load_projector
from gateway.errors import context_length_exceeded


def load(config: dict[str, Any]) -> tuple[Backend, Render]:
    from gateway.engine.worker.llamacpp import LlamaCpp

    slots = config.get("parallel", 1)
    # Each slot may run n choices; a finished request's sequence stays cached for prefix reuse.
    backend = LlamaCpp(config, slots, max_sequences=sequence_ids(slots, config["n_ctx"] * slots))
    projector = backend.projector = load_projector(config, backend.model.model)
    view = _ModelView(backend.model)
    tokenizer = Tokenizer(view)

    def tokenize(text: str, add_bos: bool, param: str) -> list[int]:
        """Bounded work, and never an empty prompt (guard.py)."""
        tokens = tokenizer.tokens(text, add_bos=add_bos, special=True, limit=backend.n_ctx, param=param)
        return nonempty_prompt(view, tokens, param)

    template = config.get("chat_template") or backend.model.metadata().get("tokenizer.chat_template")
    if format_for(config.get("reasoning_format", "auto"), template) == "harmony":
        backend.special_pieces = True  # gpt-oss's channels are control tokens: their text tells thinking apart
    images = None if projector is None else _image_tokenizer(projector, tokenizer, backend.n_ctx)
    chat = formatter(backend.model, config["chat_format"], config.get("chat_template"))
    return backend, renderer(chat, tokenize, images)


def _image_tokenizer(projector: Projector, tokenizer: Tokenizer, n_ctx: int) -> TokenizeImages:
    """The projector's tokenizer, bounded as the text one is (guard.py)."""

    def tokenize_images(
        text: str, add_bos: bool, images: list[dict[str, Any]]
    ) -> tuple[list[int], tuple[ImageSpan, ...]]:
        size = len(text.encode("utf-8"))
        if size > n_ctx and size > n_ctx * tokenizer.longest_token_bytes():
            raise too_long_to_tokenize(size, n_ctx, tokenizer.longest_token_bytes(), "messages")
        tokens, spans = image_prompt(projector.tokenize(text, add_bos, images), [i["digest"] for i in images])
        if len(tokens) > n_ctx:
            raise context_length_exceeded(len(tokens), n_ctx, "messages")
        return tokens, spans

    return tokenize_images


def load_speculation(config: dict[str, Any], backend: Backend) -> Speculation:
    """`model.speculative` for this worker: n-gram settings, and the draft model loaded beside the
    target (its vocabulary checked token for token: a mismatch fails the load)."""
    spec = config.get("speculative") or {}
    drafter = None
    if spec.get("draft"):
        from gateway.engine.worker.draft import DraftModel

        drafter = DraftModel(config, spec["draft"], backend)
    return Speculation(spec, drafter)


class _ModelView:
    """What guard.py reads of a llama-cpp-python `Llama`, over the model alone."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def n_vocab(self) -> int:
        return int(self._model.n_vocab())

    def token_bos(self) -> int:
        return int(self._model.token_bos())


def backend_info() -> dict[str, Any]:
    """What this llama.cpp build can run on (for `gateway check`); imports llama_cpp here, in the caller."""
    import llama_cpp

    system = llama_cpp.llama_print_system_info()
    text = system.decode("utf-8", errors="replace") if isinstance(system, bytes) else str(system)
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    upper = text.upper()
    name = next((b for b in ("CUDA", "Metal", "Vulkan", "ROCm", "SYCL") if b.upper() in upper), "CPU")
    return {"backend": name if gpu else "CPU", "gpu_offload": gpu, "system_info": text.strip()}
