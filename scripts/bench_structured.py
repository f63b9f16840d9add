"""Structured outputs: constrained decode speed and time to first token against the same requests
without a constraint, on one gateway, rounds interleaved (medians).

Part of `scripts/bench`; alone: `.venv/bin/python scripts/bench_structured.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sse_timing import stream_timing

# Greedy SmolLM2 writes "apple" until max_tokens, as a list when the schema asks for one.
PROMPT = [{"role": "user", "content": "Repeat the word 'apple' 500 times."}]
SAMPLING = {"temperature": 0.0, "repeat_penalty": 1.0}
WORDS = {
    "type": "object",
    # At least 64 items: greedy decoding would otherwise close the list at once.
    "properties": {"words": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 64}},
    "required": ["words"],
    "additionalProperties": False,
}
FORMATS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "words", "schema": WORDS, "strict": True}},
}


def timing(
    client: httpx.Client, url: str, model: str, max_tokens: int, fmt: dict[str, Any] | None
) -> tuple[float, float]:
    """(seconds to the first content, decode tokens/s after it) of one streamed request."""
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, **SAMPLING}
    if fmt is not None:
        body["response_format"] = fmt
    measured = stream_timing(client, url, body)
    return measured.ttft, measured.decode_tps


def measure(url: str, model: str, rounds: int, max_tokens: int) -> dict[str, Any]:
    """Decode tokens/s and TTFT per response format; ratios and deltas against no format."""
    decode: dict[str, list[float]] = {name: [] for name in FORMATS}
    ttft: dict[str, list[float]] = {name: [] for name in FORMATS}
    with httpx.Client() as client:
        # The first request with each schema compiles its grammar (and the worker's tokenizer bridge).
        first_compile_ms = {name: timing(client, url, model, 2, fmt)[0] * 1000 for name, fmt in FORMATS.items()}
        for _ in range(rounds):
            for name, fmt in FORMATS.items():
                decode[name].append(timing(client, url, model, max_tokens, fmt)[1])
                ttft[name].append(timing(client, url, model, 2, fmt)[0] * 1000)
    tps = {name: statistics.median(values) for name, values in decode.items()}
    ms = {name: statistics.median(values) for name, values in ttft.items()}
    return {
        "decode_tps": tps,
        "ttft_ms": ms,
        "first_request_ttft_ms": first_compile_ms,
        "decode_ratio": {name: tps[name] / tps["none"] for name in FORMATS if name != "none"},
        "ttft_delta_ms": {name: ms[name] - ms["none"] for name in FORMATS if name != "none"},
    }


def sampling_cpu(model_path: Path, tokens: int) -> dict[str, float]:
    """CPU milliseconds per token spent choosing it (the sampler alone, in this process's thread), with
    and without a grammar: a figure a busy machine does not distort, unlike tokens/s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gateway.engine.worker.backend import Row, SamplerSettings
    from gateway.engine.worker.llamacpp import LlamaCpp

    config = {"path": str(model_path), "n_ctx": 1024, "n_batch": 512, "n_threads": 2}
    config |= {"n_gpu_layers": 0, "use_mmap": True, "verbose": False}
    backend = LlamaCpp(config, slots=1, max_sequences=1)
    text = "<|im_start|>user\nRepeat the word 'apple' 500 times.<|im_end|>\n<|im_start|>assistant\n"
    prompt = backend.tokenize(text, add_bos=False)
    result = {}
    for name, spec in (("none", None), ("json_schema", {"json_schema": WORDS})):
        settings = SamplerSettings(0.0, 0.95, 40, 0.05, 1.0, 64, 0.0, 0.0, grammar=backend.grammar(spec))
        sampler = backend.sampler(settings, 1)
        backend.seq_rm(0, 0, -1)
        backend.decode([Row(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        row, pos, spent = len(prompt) - 1, len(prompt), []
        while len(spent) < tokens:
            started = time.thread_time()
            token = sampler.sample(row)
            spent.append(time.thread_time() - started)
            if backend.is_eog(token):
                break
            backend.decode([Row(token, pos, 0, True)])
            row, pos = 0, pos + 1
        sampler.close()
        result[name] = 1000 * statistics.mean(spent)
    return result


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    """Rows of bench.md's table: (measure, gateway, peer, target, met)."""
    ratio, delta, tps = r["decode_ratio"], r["ttft_delta_ms"], r["decode_tps"]
    return [
        (
            "Constrained decode tokens/s / unconstrained (json_object; json_schema)",
            f"{ratio['json_object']:.2f}; {ratio['json_schema']:.2f} ({tps['json_schema']:.0f} vs {tps['none']:.0f})",
            "-",
            ">= 0.8",
            min(ratio.values()) >= 0.8,
        ),
        (
            "Schema TTFT - plain, grammar cached (json_object; json_schema)",
            f"{delta['json_object']:+.1f}; {delta['json_schema']:+.1f} ms",
            "-",
            "<= +50 ms",
            max(delta.values()) <= 50,
        ),
    ] + (
        [
            (
                "Sampler CPU per token, plain / under a schema",
                f"{cpu['none']:.3f} / {cpu['json_schema']:.3f} ms",
                "-",
                "baseline",
                True,
            )
        ]
        if (cpu := r.get("sampling_cpu_ms_per_token"))
        else []
    )


def main() -> None:
    from bench import SMOLLM, gateway_server  # scripts/ is on sys.path when run as a script

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    server = gateway_server(Path(tempfile.mkdtemp(prefix="bench-structured-")), "gw", {"smollm2": SMOLLM}, {})
    try:
        result = measure(server.url, "smollm2", 2 if args.quick else 5, 128 if args.quick else 256)
    finally:
        server.stop()
    result["sampling_cpu_ms_per_token"] = sampling_cpu(SMOLLM, 128 if args.quick else 256)
    json.dump(result, sys.stdout, indent=2)
    for name, ours, _, target, met in rows(result):
        print(f"| {name} | {ours} | - | {target} | {'yes' if met else '**no**'} |")


if __name__ == "__main__":
    main()
