"""What the benchmarks share: the models, prompt and settings they measure with, the server starters,
small statistics, and the structured-outputs measurement (run by bench.py and bench_structured.py).

A bench imports this module (and sse_timing, svgplot), never another bench.
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from sse_timing import Timing, stream_timing

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SMOLLM = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_Q8 = MODELS / "SmolLM2-135M-Instruct.Q8_0.gguf"
GEMMA = MODELS / "gemma-3-270m-q4_k_m.gguf"
# Greedy SmolLM2 answers this with hundreds of tokens, so every run generates to max_tokens
# (and writes "apple" until max_tokens, as a list when a schema asks for one).
PROMPT = [{"role": "user", "content": "Repeat the word 'apple' 500 times."}]
# The same prompt in SmolLM2's chat template, for the benches that drive llama.cpp's tokenizer directly.
CHATML_PROMPT = "<|im_start|>user\nRepeat the word 'apple' 500 times.<|im_end|>\n<|im_start|>assistant\n"
N_CTX = 1024  # per sequence
THREADS = 2
SAMPLING = {"temperature": 0.0, "repeat_penalty": 1.0}


def run_size(quick: bool) -> tuple[int, int]:
    """(rounds, max_tokens) of a run: fewer and shorter with --quick."""
    return (2, 128) if quick else (5, 256)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess on a free port, stopped with SIGTERM."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{argv[:3]} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                httpx.get(f"{self.url}/v1/models", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{argv[:3]} did not start")

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def gateway_server(
    tmp: Path,
    name: str,
    models: dict[str, Path],
    gateway: dict[str, Any],
    *,
    n_ctx: int = N_CTX,
    parallel: int | None = None,
    model_extra: dict[str, dict[str, Any]] | None = None,
) -> Server:
    """`python -m gateway serve` with these models (greedy, THREADS threads; `parallel` slots if given;
    `model_extra`: more `model:` keys per model id), its config and log in `tmp` as `name`.yaml and `name`.log."""
    entries: dict[str, Any] = {}
    for model_id, path in models.items():
        runtime: dict[str, Any] = {"thread_count": THREADS}
        if parallel is not None:
            runtime["parallel"] = parallel
        entry: dict[str, Any] = {"model": {"path": str(path), "n_ctx": n_ctx}, "runtime": runtime, "sampling": SAMPLING}
        if path == GEMMA:
            entry["model"]["chat_format"] = "gemma"
        entry["model"].update((model_extra or {}).get(model_id, {}))
        entries[model_id] = entry
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"gateway": gateway, "models": entries}))
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    argv += ["--log-level", "warning"]
    return Server(argv, port, tmp / f"{name}.log")


def chat_timing(
    client: httpx.Client, url: str, model: str, max_tokens: int, response_format: dict[str, Any] | None = None
) -> Timing:
    """PROMPT streamed greedily to `model` (with `response_format` if given), timed."""
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, **SAMPLING}
    if response_format is not None:
        body["response_format"] = response_format
    return stream_timing(client, url, body)


# Structured outputs: constrained decode speed and time to first token against the same requests
# without a constraint, on one gateway, rounds interleaved (medians).

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


def measure_structured(url: str, model: str, rounds: int, max_tokens: int) -> dict[str, Any]:
    """Decode tokens/s and TTFT per response format; ratios and deltas against no format."""
    decode: dict[str, list[float]] = {name: [] for name in FORMATS}
    ttft: dict[str, list[float]] = {name: [] for name in FORMATS}
    with httpx.Client() as client:
        # The first request with each schema compiles its grammar (and the worker's tokenizer bridge).
        first_compile_ms = {name: chat_timing(client, url, model, 2, fmt).ttft * 1000 for name, fmt in FORMATS.items()}
        for _ in range(rounds):
            for name, fmt in FORMATS.items():
                decode[name].append(chat_timing(client, url, model, max_tokens, fmt).decode_tps)
                ttft[name].append(chat_timing(client, url, model, 2, fmt).ttft * 1000)
    tps = {name: median(values) for name, values in decode.items()}
    ms = {name: median(values) for name, values in ttft.items()}
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
    sys.path.insert(0, str(REPO))
    from gateway.engine.worker.backend import Row, SamplerSettings
    from gateway.engine.worker.llamacpp import LlamaCpp

    config = {"path": str(model_path), "n_ctx": N_CTX, "n_batch": 512, "n_threads": THREADS}
    config |= {"n_gpu_layers": 0, "use_mmap": True, "verbose": False}
    backend = LlamaCpp(config, slots=1, max_sequences=1)
    prompt = backend.tokenize(CHATML_PROMPT, add_bos=False)
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


def structured_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
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
