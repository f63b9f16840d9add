"""Images in a request's prompt, as the batch sees them. Runs in the worker process.

A prompt with images is one token list: an image's positions hold placeholder ids derived from its
digest (negative, so never a vocabulary token), and `Request.images` says where each image's span
starts. Prefix reuse and the KV ledger compare token lists, so they key on image content for free:
the same image after the same prefix reuses its cells, and a different image never matches. When the
prefill reaches a span, `ImageFeeder` evaluates the image's embeddings (encoded by the projector, or
taken from the worker's `EncodeCache`) into the sequence's own cells, as one decode call of its own.
Samplers and the detokenizer never see placeholders (`text_tokens`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import GatewayError, invalid_request

_FRESH_KEPT = 8  # background encodes held for their requests (ImageFeeder)
_STRIDE = 2**24  # placeholder ids per image digest: more positions than any context holds


def placeholders(digest: str, n_tokens: int) -> list[int]:
    """The ids standing for an image's `n_tokens` positions: the same image, the same ids."""
    base = int(digest[:15], 16) * _STRIDE
    return [-(1 + base + i) for i in range(n_tokens)]


def unsupported(why: str) -> GatewayError:
    """A model whose images this gateway cannot run (its projector asks for what the batch lacks)."""
    return GatewayError(501, f"This model's images cannot be served here: {why}", code="images_not_supported")


def text_tokens(tokens: Sequence[int]) -> list[int]:
    """The vocabulary tokens of a prompt, without its images' placeholders."""
    return [t for t in tokens if t >= 0]


@dataclass(frozen=True, eq=False)
class ImageChunk:
    """An image as the projector tokenized it: how many positions it takes, how its embeddings are
    attended, and how to make them (`encode`: an n_tokens x n_embd float32 array)."""

    n_tokens: int
    non_causal: bool
    encode: Callable[[], Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class ImageSpan:
    """One image of a request's prompt: its placeholders are `prompt[start:start + n_tokens]`."""

    start: int
    digest: str
    chunk: ImageChunk

    @property
    def n_tokens(self) -> int:
        return self.chunk.n_tokens

    @property
    def end(self) -> int:
        return self.start + self.chunk.n_tokens


def image_prompt(
    pieces: Sequence[list[int] | ImageChunk], digests: Sequence[str]
) -> tuple[list[int], tuple[ImageSpan, ...]]:
    """The projector's chunks (text tokens, images in order) as one token list and its spans."""
    tokens: list[int] = []
    spans: list[ImageSpan] = []
    images = iter(digests)
    for piece in pieces:
        if isinstance(piece, ImageChunk):
            digest = next(images)
            spans.append(ImageSpan(len(tokens), digest, piece))
            tokens.extend(placeholders(digest, piece.n_tokens))
        else:
            tokens.extend(piece)
    return tokens, tuple(spans)


def span_at(images: Sequence[ImageSpan], pos: int) -> ImageSpan | None:
    return next((span for span in images if span.start == pos), None)


def text_until(images: Sequence[ImageSpan], pos: int, end: int) -> int:
    """Where the text that starts at `pos` stops: the next image's start, or `end`."""
    return min((span.start for span in images if pos <= span.start < end), default=end)


class EncodeCache:
    """Encoded images kept by digest, least recently used first out, bounded in bytes: a second
    request with the same image (another turn of the chat, another client) skips the encoder."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.bytes = 0
        self.encodes = 0  # images run through the projector, since load
        self.hits = 0  # images taken from here instead

    def embeddings(self, digest: str, chunk: ImageChunk) -> Any:
        """The image's embeddings: kept ones (a hit), else encoded now and kept."""
        cached = self.get(digest, chunk.n_tokens)
        if cached is not None:
            self.hits += 1
            return cached
        return self.put(digest, chunk.encode())

    def get(self, digest: str, n_tokens: int) -> Any:
        cached = self._entries.get(digest)
        if cached is None or len(cached) != n_tokens:
            return None
        self._entries.move_to_end(digest)
        return cached

    def put(self, digest: str, embd: Any) -> Any:
        """Keep what the projector just encoded (counted), making room least recently used first."""
        self.encodes += 1
        size = int(embd.nbytes)
        if size <= self.max_bytes:
            if digest in self._entries:
                self.bytes -= int(self._entries.pop(digest).nbytes)
            while self._entries and self.bytes + size > self.max_bytes:
                self.bytes -= int(self._entries.popitem(last=False)[1].nbytes)
            self._entries[digest] = embd
            self.bytes += size
        return embd

    def __len__(self) -> int:
        return len(self._entries)


class EmbeddingBackend(Protocol):
    def decode_embeddings(self, embd: Any, pos: int, seq: int, non_causal: bool) -> int:
        """Evaluate rows of input embeddings at positions pos.. of `seq` (no logits): 0 on success."""


class ImageFeeder:
    """The batch step's hook: evaluate the image a sequence's prompt has reached into its cells.

    With `background`, an image not in the cache is encoded on a thread of its own while the batch
    goes on stepping the other sequences (a real projector's encoder can take seconds on a CPU; the
    llama.cpp calls release the GIL); the request waits at the image until `ready` says so. libmtmd
    lets one context tokenize on one thread while it encodes on another (llama-server does)."""

    def __init__(self, backend: EmbeddingBackend, cache: EncodeCache, background: bool = False) -> None:
        self._backend = backend
        self.cache = cache
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="image-encoder") if background else None
        self._pending: dict[str, Future[Any]] = {}
        self._failed: dict[str, BaseException] = {}
        # Encoded in the background for a request that waits (not a cache hit; kept even where the
        # cache has no room). A few: one whose request was cancelled meanwhile is dropped in time.
        self._fresh: OrderedDict[str, Any] = OrderedDict()

    def ready(self, span: ImageSpan) -> bool:
        """Whether the image can be evaluated now; in the background, its encode is started if not."""
        if self._encoder is None:
            return True
        self._collect()
        if span.digest in self._failed or span.digest in self._fresh:
            return True
        if self.cache.get(span.digest, span.n_tokens) is not None:
            return True
        if span.digest not in self._pending:
            self._pending[span.digest] = self._encoder.submit(span.chunk.encode)
        return False

    def wait(self, timeout: float) -> None:
        """Nothing else to step: sleep until an encode ends (or `timeout`), rather than spin."""
        if self._pending:
            wait(list(self._pending.values()), timeout, return_when=FIRST_COMPLETED)

    def evaluate(self, span: ImageSpan, seq: int) -> int:
        """Encode (or reuse) and decode the image into `seq` at its positions; llama_decode's status,
        or raises what the projector raised."""
        failed = self._failed.pop(span.digest, None)
        if failed is not None:
            raise failed
        embd = self._fresh.pop(span.digest, None)
        if embd is None:
            embd = self.cache.embeddings(span.digest, span.chunk)
        return self._backend.decode_embeddings(embd, span.start, seq, span.chunk.non_causal)

    def _collect(self) -> None:
        """Finished encodes into the cache (counted), failures kept for the request that waits."""
        for digest, future in list(self._pending.items()):
            if future.done():
                del self._pending[digest]
                error = future.exception()
                if error is not None:
                    self._failed[digest] = error
                else:
                    self._fresh[digest] = self.cache.put(digest, future.result())
                    while len(self._fresh) > _FRESH_KEPT:
                        self._fresh.popitem(last=False)


def check_images(images: Sequence[ImageSpan], prompt_tokens: int, n_batch: int) -> None:
    """What the batch cannot evaluate, refused before the request starts."""
    if images and images[-1].end >= prompt_tokens:  # the first token is sampled from the prompt's last text row
        raise invalid_request("The prompt cannot end with an image: add text after it.", "messages")
    for span in images:
        if span.chunk.non_causal and span.n_tokens > n_batch:
            raise unsupported(
                f"an image takes {span.n_tokens} tokens attended all at once, more than one decode holds "
                f"({n_batch}); raise model.n_batch."
            )
