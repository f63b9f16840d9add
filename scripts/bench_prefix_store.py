"""A prefix kept across unloads and restarts (`gateway.prefix_store`): the time to first token of a
request that shares a ~2,000-token system prompt with one answered before its model was unloaded,
against the same request's cold TTFT (target ≤ 0.2x).

One gateway, SmolLM2 Q4_1, greedy, 2 threads, n_ctx 4096, a prefix store in a temporary folder.
Each round, on the model loaded and warmed by a short unrelated request:
- cold: the store emptied, the model unloaded and loaded again, then the system prompt with question B;
- in memory: A answered, then B (the system prompt's cells from A's cached prompt), then A again;
- restored: the model unloaded (it saves A's prompt and answer) and loaded again, then B: the system
  prompt's cells come from the store, only B is evaluated. Its answer is compared with the in-memory
  one's and the cold one's: the cells are the saved ones bit for bit (tests/real/test_real_prefix_state.py),
  but llama.cpp's CPU arithmetic depends on the batch a token was evaluated in and on where its cell
  lies among the sequence's others, so answers may part after some tokens, as with any prefix reuse.
Then once across a restart: the store emptied, the gateway stopped (SIGTERM: the worker saves B's
prompt and answer) and started again on the same store, A timed (and its answer held to A's in
memory). llama-server has no automatic equivalent: it saves and restores a slot only when asked
(`POST /slots/{id}?action=save|restore`, with `--slot-save-path`), so it has no figure here.

Run through `scripts/bench --prefix-store`; writes prefix_store.json and prefix_store.md into the
output folder.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import SMOLLM, THREADS, Server, gateway_server, median
from sse_timing import sse_data

N_CTX = 4096
ADMIN = "bench-admin-key"
MODEL = "smollm2"
QUESTION_A = "Which tool would you use to rename a file? Answer in one sentence."
QUESTION_B = "Which tool lists the files in a folder? Answer in one sentence."
WARM = [{"role": "user", "content": "Say hello."}]
MAX_TOKENS = 24


def system_prompt(tools: int = 42) -> str:
    """An agent's tool catalogue: about 2,000 SmolLM2 tokens with the default count."""
    verbs = ["read", "write", "list", "move", "rename", "delete", "search", "count", "copy", "watch"]
    things = ["file", "folder", "archive", "log", "image", "table", "note", "message"]
    lines = ["You are an assistant with these tools. Call one by writing its name and arguments as JSON."]
    for i in range(tools):
        verb, thing = verbs[i % len(verbs)], things[(i // len(verbs)) % len(things)]
        lines.append(
            f"- {verb}_{thing}_{i}(path: string, limit: integer = {10 + i}): {verb.capitalize()}s the {thing} at "
            f"path, at most limit entries, and returns a JSON object with the fields ok, count and items."
        )
    return "\n".join(lines)


def ask(url: str, system: str, question: str) -> tuple[float, str, int]:
    """(TTFT, answer text, prompt tokens) of one streamed greedy request."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    started, first, text, prompt = time.perf_counter(), None, [], 0
    with httpx.Client(timeout=600) as client, client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for data in sse_data(r):
            if data.get("usage"):
                prompt = data["usage"]["prompt_tokens"]
            if data.get("choices") and (piece := data["choices"][0]["delta"].get("content")):
                first = first or time.perf_counter()
                text.append(piece)
    return (first or float("nan")) - started, "".join(text), prompt


def admin(url: str, action: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    httpx.post(f"{url}/admin/models/{MODEL}/{action}", headers=headers, timeout=600).raise_for_status()


def reload(url: str, store: Path | None = None) -> None:
    """Unload (the worker saves its prefixes first), empty the store if given, load and warm."""
    admin(url, "unload")
    if store is not None:
        for path in store.iterdir():
            path.unlink()
    admin(url, "load")
    ask(url, "You are brief.", WARM[0]["content"])


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def start(tmp: Path, store: Path) -> Server:
    settings = {"admin_key": ADMIN, "memory_budget": "4GiB", "prefix_store": {"path": str(store), "max_bytes": "2GiB"}}
    return gateway_server(tmp, "prefix-store", {MODEL: SMOLLM}, settings, n_ctx=N_CTX)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-prefix-store-"))
    store = tmp / "prefixes"
    system = system_prompt()
    cold, in_memory, restored, same, same_as_cold = [], [], [], [], []
    server = start(tmp, store)
    try:
        url = server.url
        admin(url, "load")
        for _ in range(args.rounds):
            reload(url, store)
            ttft, cold_answer, prompt_tokens = ask(url, system, QUESTION_B)
            cold.append(ttft)
            ask(url, system, QUESTION_A)
            ttft, reference, _ = ask(url, system, QUESTION_B)  # the system prompt's cells from memory
            in_memory.append(ttft)
            _, answer_a, _ = ask(url, system, QUESTION_A)  # what the unload saves
            reload(url)
            before = metric(url, "gateway_prefix_store_restored_tokens_total")
            ttft, answer, _ = ask(url, system, QUESTION_B)  # ... now from the store
            restored_tokens = metric(url, "gateway_prefix_store_restored_tokens_total") - before
            restored.append(ttft)
            same.append(answer == reference)
            same_as_cold.append(answer == cold_answer)
        store_bytes = metric(url, "gateway_prefix_store_bytes")
        for path in store.iterdir():  # what the restart finds is what SIGTERM saved (B's prompt and answer)
            path.unlink()
    finally:
        server.stop()  # SIGTERM: the worker saves its prefixes
    server = start(tmp, store)
    try:
        admin(server.url, "load")
        ask(server.url, "You are brief.", WARM[0]["content"])
        after_restart, answer, _ = ask(server.url, system, QUESTION_A)
        same.append(answer == answer_a)
    finally:
        server.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": SMOLLM.name,
        "threads": THREADS,
        "prompt_tokens": prompt_tokens,
        "restored_tokens": restored_tokens,
        "store_bytes": store_bytes,
        "cold_ttft": median(cold),
        "in_memory_ttft": median(in_memory),
        "restored_ttft": median(restored),
        "restart_ttft": after_restart,
        "cold_all": cold,
        "restored_all": restored,
        "same_as_in_memory": sum(same),  # the rounds and the restart
        "same_as_cold": sum(same_as_cold),
    }


def markdown(r: dict[str, Any]) -> str:
    ratio = r["restored_ttft"] / r["cold_ttft"]
    restart = r["restart_ttft"] / r["cold_ttft"]
    rounds = len(r["cold_all"])
    return "\n".join(
        [
            f"SmolLM2 ({r['model']}), {r['threads']} threads, greedy; prompt {r['prompt_tokens']} tokens, "
            f"{r['restored_tokens']:.0f} restored; store {r['store_bytes'] / 2**20:.1f} MiB; medians of "
            f"{rounds} rounds.",
            "",
            "| measure | gateway | llama-server | target | met |",
            "|---|---|---|---|---|",
            f"| TTFT sharing a 2,000-token prefix after an unload and load / cold | {ratio:.3f} "
            f"({r['restored_ttft'] * 1000:.0f} vs {r['cold_ttft'] * 1000:.0f} ms; kept in memory "
            f"{r['in_memory_ttft'] * 1000:.0f} ms) | - (slots saved and restored by hand only) | ≤ 0.2x "
            f"| {'yes' if ratio <= 0.2 else 'no'} |",
            f"| the same after a gateway restart (SIGTERM) / cold | {restart:.3f} "
            f"({r['restart_ttft'] * 1000:.0f} ms) | - | ≤ 0.2x | {'yes' if restart <= 0.2 else 'no'} |",
            f"| greedy answers (24 tokens) from the store equal to the prefix kept in memory | "
            f"{r['same_as_in_memory']} of {rounds + 1} | | | |",
            f"| ... equal to the cold answer (whole prompt evaluated) | {r['same_as_cold']} of {rounds} | | | |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.rounds = 2 if args.quick else 3
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix_store.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "prefix_store.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
