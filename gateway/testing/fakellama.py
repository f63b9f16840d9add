"""A fake of llama.cpp beneath the real worker loop, for fast tests (no weights, no llama_cpp).

Prompt words become tokens; the "model" answers `tok0 tok1 ...` (`reply_tokens` of them, or the
pieces of `reply`, then the end-of-generation token), each token predicted from the one before it, so
every sequence in a batch has its own answer. A grammar makes a sequence spell `{"ok": true}` (a
scripted `reply` is taken to follow it, unless `grammar_holds`: the model's pick where the grammar
allows it, else the grammar's piece). The KV pool is simulated cell
by cell with llama.cpp's rules (positions must follow on, `seq_cp` shares cells, a full pool makes
decode return 1), so the batch loop's bookkeeping is checked against an independent model of it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.base import MEDIA_MARKER, GenerationParams
from gateway.engine.worker.backend import Row, SamplerSettings
from gateway.engine.worker.guard import nonempty_prompt
from gateway.engine.worker.media import ImageChunk, image_prompt
from gateway.engine.worker.prompt import Rendered

EOS = 0
REPLY_BASE = 1  # token 1 + k is the reply's k-th piece: "tok{k} " or `reply[k]`
JSON_PIECES = ['{"', "ok", '": ', "true", "}"]
JSON_BASE = 4000
BOS = 4099  # what an empty prompt starts from, as with llama.cpp (guard.nonempty_prompt)
WORD_BASE = 4100
BEST_LOGIT, ALTERNATIVE_LOGIT = 10.0, 8.0  # every other token's logit is 0
IMAGE_TOKENS, IMAGE_EMBD = 4, 8  # what the fake projector makes of any image


@dataclass
class FakeScript:
    reply_tokens: int = 8
    reply: list[str] | None = None  # text pieces to answer with instead of `tok0 tok1 ...`
    sample: bool = False  # at temperature > 0, draw between the two likeliest tokens (seeded); else greedy
    step_delay: float = 0.0  # seconds per decode
    load_delay: float = 0.0
    fail_load: str | None = None
    crash_after_steps: int | None = None  # decodes before the worker dies (the prompt's is the first)
    # llama.cpp's log lines for the load (the worker's own device names: CUDA0 is its first visible
    # GPU); the parent reads the per-device buffers from them as from a real worker's.
    load_log: tuple[str, ...] = ()
    gpus: Any = None  # a fakenvml.FakeGpus: the load allocates there what load_log says, or runs out
    oom_after_steps: int | None = None  # a CUDA error at run time: logged, then the worker dies
    # Device memory the first decode takes on the worker's first GPU (cuBLAS's handle and workspace,
    # lazily loaded kernels, CUDA graphs): not in any load log line.
    decode_bytes: int = 0
    # A chat template's generation prompt, after the messages (a thinking template's ends with <think>).
    generation_prompt: str = ""
    # After tokens the gateway wrote itself (words, following reply pieces), the reply goes on at this piece.
    resume_at: int = 0
    # A grammar holds a scripted reply too: a piece it refuses becomes its own next JSON piece (else
    # a scripted reply is taken to follow the grammar).
    grammar_holds: bool = False
    fail_encode: bool = False  # the projector fails on every image (as libmtmd's encode can)

    @property
    def reply_length(self) -> int:
        length = len(self.reply) if self.reply is not None else self.reply_tokens
        if length >= JSON_BASE - REPLY_BASE:
            raise ValueError(f"a fake reply has fewer than {JSON_BASE - REPLY_BASE} tokens")
        return length


@dataclass
class FakeLlama:
    n_ctx: int = 256
    slots: int = 1
    n_batch: int = 64
    script: FakeScript = field(default_factory=FakeScript)
    n_vocab: int = 8192
    max_sequences: int = 32

    def __post_init__(self) -> None:
        self.kv_cells = self.n_ctx * self.slots
        self._cells: list[set[int]] = [set() for _ in range(self.kv_cells)]
        self._positions: dict[int, dict[int, int]] = {}  # seq -> pos -> cell
        self._rows: list[Row] = []
        self._words: dict[str, int] = {}
        self._lock = threading.Lock()
        self._replied: set[int] = set()  # sequences that have decoded reply tokens
        self.decodes: list[list[Row]] = []  # every batch, for assertions
        self.image_decodes: list[tuple[int, int, int]] = []  # (seq, first position, rows) per image evaluated
        self.encodes = 0  # images the fake projector encoded
        self.log: Callable[[int, str], None] | None = None  # llama.cpp's log callback, as the worker set it
        self.on_first_decode: Callable[[], None] | None = None  # the fake worker takes `decode_bytes` there

    # -- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        with self._lock:
            return [self._words.setdefault(w, WORD_BASE + len(self._words)) for w in text.split()]

    def detokenize(self, tokens: list[int]) -> str:
        return "".join(self.piece(t).decode() for t in tokens)

    def piece(self, token: int) -> bytes:
        if token in (EOS, BOS):
            return b""
        if JSON_BASE <= token < JSON_BASE + len(JSON_PIECES):
            return JSON_PIECES[token - JSON_BASE].encode()
        if token >= WORD_BASE:
            words = {i: w for w, i in self._words.items()}
            return f"{words.get(token, '?')} ".encode()
        k, reply = token - REPLY_BASE, self.script.reply
        return (reply[k] if reply is not None and k < len(reply) else f"tok{k} ").encode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def grammar(self, constraint: dict[str, Any] | None) -> str | None:
        return "fake-json" if constraint else None

    def render(self, params: GenerationParams) -> Rendered:
        if params.prompt is not None:
            return Rendered(nonempty_prompt(self, self.tokenize(params.prompt, True), "prompt"), [])
        text = " ".join(str(m.get("content") or "") for m in params.messages or [])
        text = f"{text} {self.script.generation_prompt}"
        if params.images:  # the projector's way: text between the markers, IMAGE_TOKENS per image
            parts = f"{text} ASSISTANT:".split(MEDIA_MARKER)  # a chat template's turn after the last image
            pieces: list[list[int] | ImageChunk] = [self.tokenize(parts[0], True)]
            for image, part in zip(params.images, parts[1:], strict=True):
                pieces += [
                    ImageChunk(IMAGE_TOKENS, False, self._encoder(image["digest"])),
                    self.tokenize(part, False),
                ]
            tokens, spans = image_prompt(pieces, [image["digest"] for image in params.images])
            return Rendered(tokens, [], spans)
        return Rendered(nonempty_prompt(self, self.tokenize(text, True), "messages"), [])

    def _encoder(self, digest: str) -> Callable[[], Any]:
        def encode() -> Any:
            import numpy as np

            if self.script.fail_encode:
                raise RuntimeError("mtmd_encode_chunk failed with status 1")
            self.encodes += 1
            return np.full((IMAGE_TOKENS, IMAGE_EMBD), int(digest[:4], 16), dtype=np.float32)

        return encode

    def token_bos(self) -> int:
        return BOS

    # -- the KV pool and decoding ----------------------------------------------------------------

    def used_cells(self) -> int:
        return sum(1 for cell in self._cells if cell)

    def seq_length(self, seq: int) -> int:
        return len(self._positions.get(seq, {}))

    def decode(self, rows: Sequence[Row]) -> int:
        script = self.script
        if script.crash_after_steps is not None and len(self.decodes) >= script.crash_after_steps:
            raise SystemExit("fake crash")
        if script.oom_after_steps is not None and len(self.decodes) >= script.oom_after_steps:
            if self.log is not None:
                self.log(4, "CUDA error: out of memory\n")  # what ggml-cuda logs before it aborts
            raise SystemExit("fake CUDA error")
        if self.on_first_decode is not None:
            first, self.on_first_decode = self.on_first_decode, None
            first()
        if script.step_delay:
            time.sleep(script.step_delay)
        free = [i for i, cell in enumerate(self._cells) if not cell]
        if len(free) < len(rows):
            return 1
        for row, cell in zip(rows, free, strict=False):
            positions = self._positions.setdefault(row.seq, {})
            expected = max(positions, default=-1) + 1
            if row.pos != expected:
                raise AssertionError(f"sequence {row.seq} writes position {row.pos}, expected {expected}")
            positions[row.pos] = cell
            self._cells[cell].add(row.seq)
        for row in rows:
            if REPLY_BASE <= row.token < JSON_BASE:
                self._replied.add(row.seq)
        self._rows = list(rows)
        self.decodes.append(self._rows)
        return 0

    def decode_embeddings(self, embd: Any, pos: int, seq: int, non_causal: bool) -> int:
        free = [i for i, cell in enumerate(self._cells) if not cell]
        if len(free) < len(embd):
            return 1
        positions = self._positions.setdefault(seq, {})
        if pos != max(positions, default=-1) + 1:
            raise AssertionError(f"sequence {seq} writes an image at {pos}, expected {max(positions, default=-1) + 1}")
        for i, cell in zip(range(len(embd)), free, strict=False):
            positions[pos + i] = cell
            self._cells[cell].add(seq)
        self.image_decodes.append((seq, pos, len(embd)))
        self._rows = []  # as llama.cpp: the previous decode's logits are gone
        return 0

    def logits(self, row: int) -> Any:
        import numpy as np

        last, seq = self._rows[row].token, self._rows[row].seq
        if REPLY_BASE <= last < JSON_BASE:
            k = last - REPLY_BASE + 1
            best = REPLY_BASE + k if k < self.script.reply_length else EOS
        elif last >= WORD_BASE and seq in self._replied:  # words the gateway wrote into the answer
            best = REPLY_BASE + self.script.resume_at if self.script.resume_at < self.script.reply_length else EOS
        else:
            best = REPLY_BASE if self.script.reply_length else EOS
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[best] = BEST_LOGIT
        logits[(best + 1) % JSON_BASE] = ALTERNATIVE_LOGIT  # for top_logprobs and random draws
        return logits

    def seq_rm(self, seq: int, p0: int, p1: int) -> None:
        positions = self._positions.get(seq, {})
        if p0 == 0:
            self._replied.discard(seq)
        for pos in [p for p in positions if p >= p0 and (p1 < 0 or p < p1)]:
            self._cells[positions.pop(pos)].discard(seq)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        target = self._positions.setdefault(dst, {})
        for pos, cell in self._positions.get(src, {}).items():
            if pos >= p0 and (p1 < 0 or pos < p1):
                target[pos] = cell
                self._cells[cell].add(dst)

    def sampler(self, settings: SamplerSettings, seed: int) -> FakeSampler:
        return FakeSampler(self, settings, seed)


class FakeSampler:
    def __init__(self, backend: FakeLlama, settings: SamplerSettings, seed: int) -> None:
        self._backend = backend
        self._settings = settings
        self._random = random.Random(seed)
        self._json = 0
        self.taken: list[int] = []  # every token it chose (what llama.cpp's penalties accept)
        self.consumed: list[int] = []  # what its grammar consumed

    def accept_prompt(self, tokens: Sequence[int]) -> None:
        pass

    def sample(self, row: int, free: bool = False, opens: Callable[[int], bool] | None = None) -> int:
        script = self._backend.script
        token = self._pick(row)
        if self._settings.grammar is not None and not free and (script.reply is None or script.grammar_holds):
            allowed = JSON_BASE + self._json if self._json < len(JSON_PIECES) else EOS
            if token == allowed or opens is None or not opens(token):
                token = allowed  # the model's pick if the grammar allows it, else the grammar's mask
                self._json += 1
                self.consumed.append(token)
        self.taken.append(token)
        return token

    def _pick(self, row: int) -> int:
        logits = self._backend.logits(row).copy()
        for token, bias in (self._settings.logit_bias or {}).items():
            logits[token] += bias
        if self._settings.temperature <= 0 or not self._backend.script.sample:
            return int(logits.argmax())
        first, second = (int(t) for t in (-logits).argsort()[:2])
        return first if self._random.random() < 0.7 else second


class FakeEmbedder:
    """An embedding model: one unit vector per input, from its words (or token ids)."""

    def __init__(self, n_ctx: int, dimensions: int = 64) -> None:  # 64: the tiny test GGUF's embedding_length
        self.n_ctx = n_ctx
        self._dimensions = dimensions
        self._words = FakeLlama(n_ctx=n_ctx)

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        vectors, total = [], 0
        for item in inputs:
            tokens = self.tokenize(item) if isinstance(item, str) else item
            total += len(tokens)
            raw = [float(sum(tokens) + k) for k in range(self._dimensions)]
            norm = sum(x * x for x in raw) ** 0.5 or 1.0
            vectors.append([x / norm for x in raw])
        return vectors, total

    def tokenize(self, text: str) -> list[int]:
        return self._words.tokenize(text, False)

    def detokenize(self, tokens: list[int]) -> str:
        return self._words.detokenize(tokens)
