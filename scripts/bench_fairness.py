"""One box, many teams: priority and fair share between keys (issue 23), in one run on SmolLM2 with
`runtime.parallel: 8` (greedy, 2 threads):

- interactive TTFT on an idle model (a key `alice`, one short streamed request at a time);
- a flood alone: key `eval` (priority batch) with 24 streams of 128 tokens, its aggregate tokens/s;
- the same flood while `alice` sends short streamed requests one after another: her TTFT p95 (target
  ≤ 3x idle and ≤ 0.3 s) and the flood's tokens/s (target ≥ 0.8x the flood alone);
- two batch keys, one keeping 16 streams in flight and one keeping 4 (each stream followed at once by
  another, for a fixed time): each key's share of the tokens streamed while both have work (target:
  within 10 points of even; first come, first served would give the small key about a fifth).

Run through `scripts/bench --fairness`; writes fairness.json and fairness.md into the output folder.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PROMPT, SMOLLM, THREADS, Server, gateway_server, percentile

SLOTS = 8
FLOOD, FLOOD_TOKENS = 24, 128
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_TOKENS = 16
SHARE_TOKENS = (16, 64)  # short streams of varied length, so that turns change hands often
KEYS = {"alice": "sk-bench-alice", "eval": "sk-bench-eval1", "big": "sk-bench-big01", "small": "sk-bench-small"}


def stream(url: str, key: str, messages: list[dict[str, str]], max_tokens: int) -> list[float]:
    """One streamed greedy request; the perf_counter time of every content chunk, the send time first."""
    body = {"model": "smollm2", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    times = [time.perf_counter()]
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    with (
        httpx.Client(headers=headers, timeout=600) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    return times


def ttft(times: list[float]) -> float:
    return times[1] - times[0] if len(times) > 1 else float("nan")


def in_threads(jobs: list[tuple[str, int]], url: str) -> list[tuple[str, list[float]]]:
    """Each (key, max_tokens) as a stream of its own, all started together (in the order given)."""
    results: list[tuple[str, list[float]]] = []
    lock = threading.Lock()

    def one(key: str, tokens: int) -> None:
        times = stream(url, key, PROMPT, tokens)
        with lock:
            results.append((key, times))

    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for thread in threads:
        thread.start()
        time.sleep(0.005)  # arrival order as listed
    for thread in threads:
        thread.join()
    return results


def tokens_per_s(results: list[tuple[str, list[float]]]) -> float:
    start = min(times[0] for _, times in results)
    end = max(times[-1] for _, times in results)
    return sum(len(times) - 1 for _, times in results) / (end - start)


def flood_with_chat(url: str) -> tuple[list[tuple[str, list[float]]], list[float]]:
    """The flood, and alice's TTFTs for requests sent one after another while it runs."""
    flood: list[tuple[str, list[float]]] = []
    runner = threading.Thread(target=lambda: flood.extend(in_threads([("eval", FLOOD_TOKENS)] * FLOOD, url)))
    runner.start()
    time.sleep(1.0)  # every slot is held by the flood
    ttfts = []
    while runner.is_alive():
        ttfts.append(ttft(stream(url, "alice", CHAT, CHAT_TOKENS)))
    runner.join()
    return flood, ttfts[:-1] or ttfts  # the last may have started as the flood ended


def closed_loop(url: str, streams: dict[str, int], seconds: float) -> dict[str, list[float]]:
    """Each key keeps its number of streams in flight (a new one as soon as one ends) for `seconds`;
    the times of every token each key got."""
    until = time.perf_counter() + seconds
    tokens: dict[str, list[float]] = {key: [] for key in streams}
    lock = threading.Lock()

    def client(key: str, seed: int) -> None:
        lengths = random.Random(seed)  # streams of varied length, as real ones are (equal ones end in waves)
        while time.perf_counter() < until:
            times = stream(url, key, PROMPT, lengths.randint(*SHARE_TOKENS))
            with lock:
                tokens[key].extend(times[1:])

    clients = [key for key, n in streams.items() for _ in range(n)]
    threads = [threading.Thread(target=client, args=(key, seed)) for seed, key in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tokens


def shares(tokens: dict[str, list[float]], start: float, end: float) -> dict[str, float]:
    """Each key's share of the tokens streamed between `start` and `end` (both keys have work then)."""
    counts = {key: sum(1 for t in times if start <= t <= end) for key, times in tokens.items()}
    total = sum(counts.values()) or 1
    return {key: n / total for key, n in counts.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    keys = [
        {"id": "alice", "key": KEYS["alice"]},
        {"id": "eval", "key": KEYS["eval"], "priority": "batch"},
        {"id": "big", "key": KEYS["big"], "priority": "batch"},
        {"id": "small", "key": KEYS["small"], "priority": "batch"},
    ]
    settings = {"cpu_threads": 0, "max_queue": 64, "memory_budget": "4GiB", "api_keys": keys}
    server: Server = gateway_server(tmp, "fairness", {"smollm2": SMOLLM}, settings, n_ctx=512, parallel=SLOTS)
    try:
        url = server.url
        stream(url, "alice", CHAT, 2)  # warm: loaded, first prompt evaluated
        idle = [ttft(stream(url, "alice", CHAT, CHAT_TOKENS)) for _ in range(args.rounds)]
        alone = tokens_per_s(in_threads([("eval", FLOOD_TOKENS)] * FLOOD, url))
        flood, busy = flood_with_chat(url)
        began = time.perf_counter()
        mixed = closed_loop(url, {"big": 16, "small": 4}, args.share_seconds)
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.stop()
    preemptions = [line for line in metrics.splitlines() if line.startswith("gateway_preemptions_total")]
    return {
        "model": SMOLLM.name,
        "slots": SLOTS,
        "threads": THREADS,
        "idle_ttft_p50": percentile(idle, 0.5),
        "idle_ttft_p95": percentile(idle, 0.95),
        "flood_ttft_p50": percentile(busy, 0.5),
        "flood_ttft_p95": percentile(busy, 0.95),
        "flood_ttft_count": len(busy),
        "flood_alone_tps": alone,
        "flood_with_chat_tps": tokens_per_s(flood),
        # From the first turnover (the first streams all started together) until the clients stop.
        "shares": shares(mixed, began + 5.0, began + args.share_seconds),
        "share_seconds": args.share_seconds,
        "preemptions": preemptions,
    }


def markdown(r: dict[str, Any]) -> str:
    idle, busy = r["idle_ttft_p95"], r["flood_ttft_p95"]
    ratio = r["flood_with_chat_tps"] / r["flood_alone_tps"]
    small = r["shares"]["small"]
    return "\n".join(
        [
            f"SmolLM2 ({r['model']}), parallel {r['slots']}, {r['threads']} threads, greedy; one run.",
            "",
            "| measure | value | target | met |",
            "|---|---|---|---|",
            f"| interactive TTFT p50 / p95, idle | {r['idle_ttft_p50'] * 1000:.0f} / {idle * 1000:.0f} ms | | |",
            f"| interactive TTFT p50 beside the flood | {r['flood_ttft_p50'] * 1000:.0f} ms | | |",
            f"| interactive TTFT p95 beside a 24-stream batch flood ({r['flood_ttft_count']} requests) "
            f"| {busy * 1000:.0f} ms ({busy / idle:.1f}x idle) | ≤ 3x idle and ≤ 300 ms "
            f"| {'yes' if busy <= 3 * idle and busy <= 0.3 else 'no'} |",
            f"| flood tokens/s with the interactive requests / alone | {r['flood_with_chat_tps']:.1f} / "
            f"{r['flood_alone_tps']:.1f} ({ratio:.2f}x) | ≥ 0.8x | {'yes' if ratio >= 0.8 else 'no'} |",
            f"| token share of a key keeping 4 streams beside one keeping 16, both batch | {small * 100:.0f}% "
            f"| 40-60% | {'yes' if 0.4 <= small <= 0.6 else 'no'} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.rounds = 5 if args.quick else 10
    args.share_seconds = 20.0 if args.quick else 40.0
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fairness.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "fairness.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
