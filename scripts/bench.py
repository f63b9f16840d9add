"""Measures the gateway against raw llama-cpp-python and llama-cpp-python's own server, side by side.

Run through `scripts/bench` (which builds the peer's venv). Every figure is a median over rounds
taken in one run, with the same model, prompt and settings (greedy, repeat_penalty 1.0, 2 threads).
Writes bench.json, bench.md and bench.png into the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from benchlib import (
    GEMMA,
    N_CTX,
    PROMPT,
    REPO,
    SAMPLING,
    SMOLLM,
    SMOLLM_Q8,
    THREADS,
    Server,
    chat_timing,
    free_port,
    gateway_server,
    measure_structured,
    median,
    percentile,
    run_size,
    sampling_cpu,
    structured_rows,
)
from sse_timing import Timing

from gateway.engine.worker.backend import plain_weight_buffers


def peer_server(tmp: Path, python: Path) -> Server:
    models = [
        {"model": str(p), "model_alias": alias, "n_ctx": N_CTX, "n_threads": THREADS, "verbose": False}
        for alias, p in (("smollm2", SMOLLM), ("smollm2-q8", SMOLLM_Q8))
    ]
    port = free_port()
    config = tmp / "peer.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
    argv = [str(python), "-c", PEER_MAIN, "--config_file", str(config)]
    return Server(argv, port, tmp / "peer.log")


# `python -m llama_cpp.server`, its weights in plain buffers where the CPU backend has AMX, as the
# gateway's workers load them (llama.cpp's AMX kernels crash on this project's machines; see
# gateway/engine/worker/backend.py): the peer runs in a venv of its own, so the patch is inline.
PEER_MAIN = """
import sys
import llama_cpp.llama_cpp as low
if b"AMX_INT8 = 1" in low.llama_print_system_info():
    default = low.llama_model_default_params
    def plain():
        params = default()
        params.use_extra_bufts = False
        return params
    low.llama_model_default_params = plain
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def raw_timing(llm: Any, max_tokens: int) -> Timing:
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llm.create_chat_completion(PROMPT, max_tokens=max_tokens, stream=True, **SAMPLING):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            if not first:
                first = last
            tokens += 1
    return Timing(first - started, tokens, last - first)


def raw_cold_start(path: Path) -> float:
    import llama_cpp

    started = time.perf_counter()
    with plain_weight_buffers(llama_cpp):  # as the worker loads it
        llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=THREADS, verbose=False)
    for _ in llm.create_chat_completion(PROMPT, max_tokens=1, stream=True, **SAMPLING):
        pass
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed


def first_token_seconds(client: httpx.Client, url: str, model: str) -> float:
    return chat_timing(client, url, model, 1).ttft


def alternating_rps(url: str, requests_per_client: int) -> float:
    """Two clients, each alternating between the two SmolLM2 models; completed requests per second."""
    errors: list[Exception] = []

    def client_loop(offset: int) -> None:
        with httpx.Client() as client:
            for i in range(requests_per_client):
                model = ("smollm2", "smollm2-q8")[(i + offset) % 2]
                body = {"model": model, "messages": PROMPT, "max_tokens": 16, **SAMPLING}
                try:
                    client.post(f"{url}/v1/chat/completions", json=body, timeout=300).raise_for_status()
                except Exception as exc:
                    errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"alternation failed: {errors[0]!r}")
    return 2 * requests_per_client / (time.perf_counter() - started)


@contextlib.contextmanager
def background_streams(url: str, count: int, max_tokens: int) -> Iterator[None]:
    done = threading.Event()

    def loop() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                chat_timing(client, url, "smollm2", max_tokens)

    threads = [threading.Thread(target=loop) for _ in range(count)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        done.set()
        for t in threads:
            t.join()


def health_latency(url: str, samples: int) -> dict[str, float]:
    """/health while four streams generate."""
    latencies = []
    with background_streams(url, 4, 128), httpx.Client() as client:
        time.sleep(1.0)
        for _ in range(samples):
            started = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
    return {"p50_ms": median(latencies), "p99_ms": percentile(latencies, 0.99)}


def concurrency(url: str, levels: list[int], max_tokens: int) -> dict[str, float]:
    results = {}

    def one(totals: list[int]) -> None:
        with httpx.Client() as client:
            totals.append(chat_timing(client, url, "smollm2", max_tokens).tokens)

    for level in levels:
        totals: list[int] = []
        started = time.perf_counter()
        threads = [threading.Thread(target=one, args=(totals,)) for _ in range(level)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results[str(level)] = sum(totals) / (time.perf_counter() - started)
    return results


def models_cards(url: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in httpx.get(f"{url}/v1/models").json()["data"]}


def pool_errors(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The estimate's error per memory pool: the host from the worker's measured size, each GPU from
    what its load measured there (llama.cpp's buffers, or NVML's per-process figure)."""
    measured = {**after.get("memory_pools", {}), "host": after["memory_bytes"]}
    return {
        pool: {"estimate": est, "measured": measured[pool], "error_pct": 100 * (est - measured[pool]) / measured[pool]}
        for pool, est in before.get("memory_pools", {"host": before["memory_bytes"]}).items()
        if measured.get(pool)
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    quick = args.quick
    rounds, max_tokens = run_size(quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__,
        },
        "settings": {
            "model": SMOLLM.name,
            "threads": THREADS,
            "n_ctx": N_CTX,
            "max_tokens": max_tokens,
            "rounds": rounds,
            "quick": quick,
        },
    }

    gw = gateway_server(
        tmp, "gateway", {"smollm2": SMOLLM, "smollm2-q8": SMOLLM_Q8, "gemma": GEMMA}, {"memory_budget": "2GiB"}
    )
    peer = peer_server(tmp, Path(args.peer_python)) if args.peer_python else None
    before = models_cards(gw.url)
    estimates = {m: c["memory_bytes"] for m, c in before.items()}
    with plain_weight_buffers(llama_cpp):  # as the worker loads it
        llm = llama_cpp.Llama(str(SMOLLM), n_ctx=N_CTX, n_threads=THREADS, verbose=False)
    timings: dict[str, list[Timing]] = {"raw": [], "gateway": [], "peer": []}
    with httpx.Client() as client:
        # Warm-up: load the model everywhere and fill the prompt cache.
        raw_timing(llm, 4)
        chat_timing(client, gw.url, "smollm2", 4)
        if peer:
            chat_timing(client, peer.url, "smollm2", 4)
        for _ in range(rounds):
            timings["raw"].append(raw_timing(llm, max_tokens))
            timings["gateway"].append(chat_timing(client, gw.url, "smollm2", max_tokens))
            if peer:
                timings["peer"].append(chat_timing(client, peer.url, "smollm2", max_tokens))
    llm.close()

    def summary(name: str) -> dict[str, float]:
        ts = timings[name]
        return {"decode_tps": median([t.decode_tps for t in ts]), "ttft_ms": median([t.ttft * 1000 for t in ts])}

    single = {name: summary(name) for name in timings if timings[name]}
    result["single_stream"] = single
    result["decode_ratio_gateway"] = single["gateway"]["decode_tps"] / single["raw"]["decode_tps"]
    result["ttft_delta_ms_gateway"] = single["gateway"]["ttft_ms"] - single["raw"]["ttft_ms"]
    if peer:
        result["decode_ratio_peer"] = single["peer"]["decode_tps"] / single["raw"]["decode_tps"]
        result["ttft_delta_ms_peer"] = single["peer"]["ttft_ms"] - single["raw"]["ttft_ms"]

    per_client = 4 if quick else 10
    gateway_rps = alternating_rps(gw.url, per_client)
    result["alternation"] = {"gateway_rps": gateway_rps}
    if peer:
        peer_rps = alternating_rps(peer.url, per_client)
        result["alternation"].update({"peer_rps": peer_rps, "ratio": gateway_rps / peer_rps})
        peer.stop()

    result["structured"] = measure_structured(gw.url, "smollm2", rounds, max_tokens)
    result["structured"]["sampling_cpu_ms_per_token"] = sampling_cpu(SMOLLM, max_tokens)
    result["health_under_load"] = health_latency(gw.url, 150)  # 3 s; fewer samples make "p99" the maximum
    result["concurrency_tps"] = concurrency(gw.url, [1, 2, 4, 8], 32 if quick else 64)

    for model_id in ("smollm2", "smollm2-q8", "gemma"):
        with httpx.Client() as client:
            chat_timing(client, gw.url, model_id, 8)
            # A full batch of prompt: the compute buffer's pages count once used, and the estimate is
            # of that peak (as `gateway check --measure` measures it), constrained decoding included.
            body = {"model": model_id, "prompt": " hello" * 500, "max_tokens": 1, "temperature": 0}
            client.post(f"{gw.url}/v1/completions", json=body, timeout=600).raise_for_status()
            body = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            body["response_format"] = {"type": "json_object"}  # and constrained decoding's vocabulary view
            client.post(f"{gw.url}/v1/chat/completions", json=body, timeout=600).raise_for_status()
    cards = models_cards(gw.url)
    result["memory"] = {
        m: {
            "estimate": estimates[m],
            "measured": cards[m]["memory_bytes"],
            "error_pct": 100 * (estimates[m] - cards[m]["memory_bytes"]) / cards[m]["memory_bytes"],
            "pools": pool_errors(before[m], cards[m]),
        }
        for m in estimates
    }
    gw.stop()

    # Cold starts and load/unload cycles: a gateway that holds one model at a time.
    cold = gateway_server(tmp, "cold", {"smollm2": SMOLLM, "smollm2-q8": SMOLLM_Q8}, {"max_loaded": 1})
    gw_cold: list[float] = []
    raw_cold: list[float] = []
    cycles = 20 if quick else 100
    rss_first = 0
    with httpx.Client() as client:
        for i in range(cycles):
            model = ("smollm2", "smollm2-q8")[i % 2]
            measured = i < 2 * rounds and model == "smollm2"
            if measured:
                time.sleep(2.0)  # let the spare worker start, as between real-world switches
            seconds = first_token_seconds(client, cold.url, model)
            if measured:
                gw_cold.append(seconds)
                raw_cold.append(raw_cold_start(SMOLLM))
            if i == 1:
                rss_first = cold.rss()
    rss_last = cold.rss()
    cold.stop()
    result["cold_start"] = {
        "gateway_ms": median(gw_cold) * 1000,
        "raw_ms": median(raw_cold) * 1000,
        "ratio": median(gw_cold) / median(raw_cold),
    }
    result["load_unload_cycles"] = {
        "cycles": cycles,
        "gateway_rss_first_mb": rss_first / 2**20,
        "gateway_rss_last_mb": rss_last / 2**20,
        "growth_mb": (rss_last - rss_first) / 2**20,
    }
    return result


def markdown(r: dict[str, Any]) -> str:
    single = r["single_stream"]
    peer = "peer" in single
    rows = [
        (
            "Decode tokens/s / raw",
            f"{r['decode_ratio_gateway']:.3f}",
            f"{r['decode_ratio_peer']:.3f}" if peer else "-",
            ">= 0.97",
            r["decode_ratio_gateway"] >= 0.97,
        ),
        (
            "TTFT - raw (warm)",
            f"{r['ttft_delta_ms_gateway']:+.1f} ms",
            f"{r['ttft_delta_ms_peer']:+.1f} ms" if peer else "-",
            "<= 10 ms",
            r["ttft_delta_ms_gateway"] <= 10,
        ),
    ]
    alt = r["alternation"]
    if "ratio" in alt:
        rows.append(
            (
                "Two clients alternating two models, req/s",
                f"{alt['gateway_rps']:.2f}",
                f"{alt['peer_rps']:.2f}",
                "gateway >= 2x peer",
                alt["ratio"] >= 2,
            )
        )
    cold = r["cold_start"]
    rows.append(
        (
            "Cold start (spawn + load + first token) / raw",
            f"{cold['ratio']:.2f} ({cold['gateway_ms']:.0f} ms vs {cold['raw_ms']:.0f} ms)",
            "-",
            "<= 1.5",
            cold["ratio"] <= 1.5,
        )
    )
    health = r["health_under_load"]
    rows.append(
        (
            "/health p50 / p99 with 4 streams",
            f"{health['p50_ms']:.1f} / {health['p99_ms']:.1f} ms",
            "-",
            "p99 <= 20 ms",
            health["p99_ms"] <= 20,
        )
    )
    worst = max(abs(m["error_pct"]) for m in r["memory"].values())
    rows.append(("Memory estimate vs measured (worst model)", f"{worst:.1f}%", "-", "+/- 15%", worst <= 15))
    pools = sorted({pool for m in r["memory"].values() for pool in m.get("pools", {})})
    for pool in pools:  # per device: the host here; each GPU on a GPU machine
        errors = [m["pools"][pool]["error_pct"] for m in r["memory"].values() if pool in m.get("pools", {})]
        worst_pool = max(errors, key=abs)
        label = f"Memory estimate vs measured on {pool} (worst model)"
        rows.append((label, f"{worst_pool:+.1f}%", "-", "within 10%", abs(worst_pool) <= 10))
    cycles = r["load_unload_cycles"]
    rows.append(
        (
            f"Gateway RSS growth over {cycles['cycles']} load/unload cycles",
            f"{cycles['growth_mb']:+.1f} MB",
            "-",
            "<= 10 MB",
            cycles["growth_mb"] <= 10,
        )
    )
    rows.extend(structured_rows(r["structured"]))
    conc = ", ".join(f"{k}: {v:.0f}" for k, v in r["concurrency_tps"].items())
    rows.append(("Aggregate tokens/s at 1, 2, 4, 8 streams", conc, "-", "baseline", None))
    lines = ["| measure | gateway | llama-cpp-python server | target | met |", "|---|---|---|---|---|"]
    for name, ours, theirs, target, met in rows:
        mark = "-" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {ours} | {theirs} | {target} | {mark} |")
    raw = single["raw"]
    lines.append("")
    lines.append(
        f"Raw llama-cpp-python: {raw['decode_tps']:.1f} tokens/s decode, {raw['ttft_ms']:.1f} ms TTFT. "
        f"Gateway: {single['gateway']['decode_tps']:.1f} tokens/s, {single['gateway']['ttft_ms']:.1f} ms."
    )
    return "\n".join(lines) + "\n"


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    single = r["single_stream"]
    names = list(single)
    colors = ["grey", "tab:blue", "tab:orange"][: len(names)]
    axes[0][0].bar(names, [single[n]["decode_tps"] for n in names], color=colors)
    axes[0][0].set_title("Single-stream decode (tokens/s)")
    axes[0][1].bar(names, [single[n]["ttft_ms"] for n in names], color=colors)
    axes[0][1].set_title("Time to first token, warm (ms)")
    cold = r["cold_start"]
    axes[1][0].bar(["raw", "gateway"], [cold["raw_ms"], cold["gateway_ms"]], color=["grey", "tab:blue"])
    axes[1][0].set_title("Cold start to first token (ms)")
    conc = r["concurrency_tps"]
    axes[1][1].plot([int(k) for k in conc], list(conc.values()), marker="o")
    axes[1][1].set_title("Aggregate tokens/s vs concurrent streams")
    axes[1][1].set_xscale("log", base=2)
    axes[1][1].set_ylim(bottom=0)
    fig.suptitle(f"Gateway benchmark ({r['settings']['model']}, {r['settings']['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer rounds and cycles")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--peer-python", default=None, help="python of a venv with llama-cpp-python[server]")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "bench.md").write_text(table)
    chart(result, args.out / "bench.png")
    print(table)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
