"""The worker's image path alone, on SmolLM2 with scripts/tiny-projector's projector: what a prompt
with one image costs to tokenize (libmtmd), to encode, and to evaluate (its 16 embedding rows in a
decode of their own, what one batch step adds while an image is prefilled) beside as many text rows
and a one-token text decode. Medians of wall clock on 2 threads (compare within one run on a shared
machine); the tiny projector's encoder says nothing of a real one's.
Usage: .venv/bin/python scripts/bench_images.py [MODEL.gguf]
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import SMOLLM
from tiny_projector import write_tiny_projector

from gateway.engine.base import MEDIA_MARKER, GenerationParams
from gateway.engine.worker.backend import Row
from gateway.engine.worker.load import load
from gateway.engine.worker.logcapture import LogCapture
from gateway.gguf.header import read_gguf_info

RUNS = 30


def image(i: int) -> dict[str, Any]:
    rgb = bytes([(i * 37 + k) % 256 for k in range(3)]) * (32 * 32)
    return {"digest": hashlib.sha256(rgb).hexdigest(), "width": 32, "height": 32, "rgb": rgb}


def params(images: list[dict[str, Any]]) -> GenerationParams:
    return GenerationParams(
        messages=[{"role": "user", "content": f"What colour?{MEDIA_MARKER}"}], max_tokens=8, temperature=0,
        top_p=1, top_k=40, min_p=0.05, repeat_penalty=1, presence_penalty=0, frequency_penalty=0, stop=[],
        seed=1, images=images,
    )  # fmt: skip


def timed(call: Callable[[], Any], into: list[float]) -> Any:
    start = time.perf_counter()
    result = call()
    into.append(time.perf_counter() - start)
    return result


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else SMOLLM
    LogCapture(echo=False).install()  # libmtmd logs every prompt's chunks otherwise
    width = read_gguf_info(model).embedding_length
    with tempfile.TemporaryDirectory() as folder:
        projector = write_tiny_projector(Path(folder) / "mmproj.gguf", width)
        config = {
            "path": str(model), "mmproj": str(projector), "n_ctx": 512, "n_batch": 64, "n_gpu_layers": 0,
            "chat_format": None, "use_mmap": True, "verbose": False, "n_threads": 2, "parallel": 4,
            "embedding": False,
        }  # fmt: skip
        backend, render = load(config)
        tokenize: list[float] = []
        encode: list[float] = []
        image_rows: list[float] = []
        text_row: list[float] = []
        text_rows: list[float] = []
        for i in range(RUNS):
            rendered = timed(lambda i=i: render(params([image(i)])), tokenize)
            span = rendered.images[0]
            embd = timed(span.chunk.encode, encode)
            backend.seq_rm(0, 0, -1)
            assert backend.decode([Row(t, p, 0, False) for p, t in enumerate(rendered.tokens[: span.start])]) == 0
            assert timed(lambda e=embd, s=span.start: backend.decode_embeddings(e, s, 0, False), image_rows) == 0
            backend.seq_rm(1, 0, -1)  # as many text rows at the same place, for comparison
            assert backend.decode([Row(t, p, 1, False) for p, t in enumerate(rendered.tokens[: span.start])]) == 0
            rows = [Row(t, span.start + p, 1, False) for p, t in enumerate(rendered.tokens[: span.n_tokens])]
            assert timed(lambda rows=rows: backend.decode(rows), text_rows) == 0
            after = Row(rendered.tokens[span.end], span.end, 0, True)
            assert timed(lambda after=after: backend.decode([after]), text_row) == 0

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values[5:]) * 1000:.2f} ms"

    print(f"model {model.name}, image tokens {span.n_tokens}, median of {RUNS - 5} runs after 5 warm-ups")
    print(f"render + mtmd_tokenize {ms(tokenize)} | encode {ms(encode)} | decode the image's rows {ms(image_rows)}")
    print(f"decode as many text rows {ms(text_rows)} | decode one text row {ms(text_row)}")


if __name__ == "__main__":
    main()
