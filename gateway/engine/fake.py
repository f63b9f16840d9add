"""A deterministic in-process engine for fast tests of the gateway's own logic (no llama.cpp).

Prompt tokens are whitespace-separated words; the reply is `tok0 tok1 ...`. Loading, token timing,
load failures and crashes are scripted per model with `FakeScript`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ModelEntry
from gateway.engine.base import ChoiceFinished, Delta, Engine, Finished, Generation, GenerationParams, Started
from gateway.engine.stops import StopMatcher
from gateway.errors import context_length_exceeded, load_failed, worker_died


@dataclass
class FakeScript:
    reply_tokens: int = 8
    token_delay: float = 0.0
    load_delay: float = 0.0
    fail_load: str | None = None
    crash_after_tokens: int | None = None
    memory_bytes: int | None = None
    reply: list[str] | None = None  # text pieces to answer with instead of `tok0 tok1 ...`


@dataclass
class FakeEngineFactory:
    """Creates fake engines and records what happened to them, for assertions."""

    scripts: dict[str, FakeScript] = field(default_factory=dict)
    loads: dict[str, int] = field(default_factory=dict)
    engines: list[FakeEngine] = field(default_factory=list)

    def __call__(self, model_id: str, entry: ModelEntry) -> FakeEngine:
        self.loads[model_id] = self.loads.get(model_id, 0) + 1
        engine = FakeEngine(model_id, entry, self.scripts.get(model_id, FakeScript()))
        self.engines.append(engine)
        return engine

    def live(self) -> list[str]:
        return [e.model_id for e in self.engines if e.alive]


def _fake_logprob(token: str, top: int) -> dict[str, Any]:
    def describe(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    entry = describe(token, -0.5)
    entry["top_logprobs"] = [describe(token if k == 0 else f"alt{k}", -0.5 - k) for k in range(top)]
    return entry


class FakeEngine(Engine):
    def __init__(self, model_id: str, entry: ModelEntry, script: FakeScript) -> None:
        super().__init__()
        self.model_id = model_id
        self.entry = entry
        self.script = script
        self.started = False
        self.stopped = False
        self.crashed = False
        self.cancelled: list[int] = []
        self.completed: list[int] = []
        self._lock = asyncio.Lock()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._next_id = 0
        self._vocab: dict[str, int] = {}
        self.entry_embedding_dim = 64  # the tiny test GGUF's embedding_length

    async def tokenize(self, text: str) -> list[int]:
        return [self._vocab.setdefault(word, len(self._vocab) + 1) for word in text.split()]

    async def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], int]:
        vectors, total = [], 0
        for item in inputs:
            words = item.split() if isinstance(item, str) else [str(t) for t in item]
            total += len(words)
            raw = [float(sum(len(w) for w in words) + k) for k in range(self.entry_embedding_dim)]
            norm = sum(x * x for x in raw) ** 0.5 or 1.0
            vectors.append([x / norm for x in raw])
        return vectors, total

    async def detokenize(self, tokens: list[int]) -> str:
        words = {i: w for w, i in self._vocab.items()}
        return " ".join(words.get(t, "?") for t in tokens)

    @property
    def alive(self) -> bool:
        return self.started and not self.stopped and not self.crashed

    async def start(self) -> None:
        await asyncio.sleep(self.script.load_delay)
        if self.script.fail_load:
            raise load_failed(self.model_id, self.script.fail_load, None)
        self.started = True

    def measured_bytes(self) -> int | None:
        return self.script.memory_bytes if self.alive else None

    def generate(self, params: GenerationParams) -> Generation:
        self._next_id += 1
        generation = Generation(self._next_id, self._cancel, params.n)
        self._tasks[generation.request_id] = asyncio.create_task(self._run(generation, params))
        return generation

    def _cancel(self, request_id: int) -> None:
        task = self._tasks.pop(request_id, None)
        if task is not None:
            self.cancelled.append(request_id)
            task.cancel()

    def crash(self, reason: str = "killed by signal 9") -> None:
        """Simulate the worker dying: every generation fails, the scheduler is told."""
        self.crashed = True
        for task in self._tasks.values():
            task.cancel()
        self._report_exit(reason)

    async def _run(self, generation: Generation, params: GenerationParams) -> None:
        try:
            async with self._lock:
                await self._produce(generation, params)
        except asyncio.CancelledError:
            if self.crashed:
                generation.feed(worker_died(self.model_id, "killed by signal 9"))
        finally:
            self._tasks.pop(generation.request_id, None)

    async def _produce(self, generation: Generation, params: GenerationParams) -> None:
        if params.prompt is not None:
            prompt_tokens, param = len(params.prompt.split()), "prompt"
        else:
            prompt_tokens = sum(len((m["content"] or "").split()) for m in params.messages or [])
            param = "messages"
        n_ctx = self.entry.model.n_ctx
        if prompt_tokens >= n_ctx:
            generation.feed(context_length_exceeded(prompt_tokens, n_ctx, param))
            return
        limit = min(params.max_tokens or n_ctx, (n_ctx - prompt_tokens) // params.n)
        generation.feed(Started(prompt_tokens))
        # Choices advance in lockstep, as a batched worker interleaves them.
        matchers = [StopMatcher(params.stop) for _ in range(params.n)]
        produced = [0] * params.n
        finish = ["stop"] * params.n
        active = list(range(params.n))
        pieces = self.script.reply or [f"tok{i} " for i in range(self.script.reply_tokens)]
        for i, piece in enumerate(pieces):
            if self.script.crash_after_tokens is not None and i >= self.script.crash_after_tokens:
                self.crash()
                await asyncio.sleep(3600)  # cancelled by crash()
            await asyncio.sleep(self.script.token_delay)
            for choice in list(active):
                if produced[choice] >= limit:
                    finish[choice] = "length"
                    active.remove(choice)
                    continue
                produced[choice] += 1
                text, hit = matchers[choice].feed(piece)
                entries = [_fake_logprob(piece, params.top_logprobs)] if params.logprobs else None
                if text or entries:
                    generation.feed(Delta(text, entries, choice))
                if hit:
                    active.remove(choice)
            if not active:
                break
        for choice in active:
            rest = matchers[choice].flush()
            if rest:
                generation.feed(Delta(rest, None, choice))
        self.completed.append(generation.request_id)
        if params.n == 1:
            generation.feed(Finished(finish[0], prompt_tokens, produced[0]))
            return
        for choice in range(params.n):
            generation.feed(ChoiceFinished(choice, finish[choice], produced[choice]))
        generation.feed(Finished("stop", prompt_tokens, sum(produced)))

    async def stop(self) -> None:
        self.stopped = True
        for task in list(self._tasks.values()):
            task.cancel()
