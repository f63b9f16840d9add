"""The parent handle, the wire messages and the real worker loop over the fake llama.cpp: concurrent
requests of every kind are batched together and each comes out as if it had run alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ModelEntry
from gateway.engine.base import BatchState, ChoiceFinished, Delta, Finished, GenerationParams, Started
from gateway.engine.process.handle import ProcessEngine
from gateway.errors import GatewayError
from gateway.testing.fakellama import FakeLlama, FakeScript
from gateway.testing.fakeworker import spawn_fake_worker

pytestmark = pytest.mark.anyio


def params(content: str, **overrides: Any) -> GenerationParams:
    fields: dict[str, Any] = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 40,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": [],
        "seed": 7,
    }
    fields.update(overrides)
    return GenerationParams(**fields)


async def start(tmp_path: Path, script: FakeScript, parallel: int = 4) -> tuple[ProcessEngine, list[FakeLlama]]:
    backends: list[FakeLlama] = []
    entry = ModelEntry.model_validate(
        {"model": {"path": str(tmp_path / "fake.gguf"), "n_ctx": 128}, "runtime": {"parallel": parallel}}
    )
    engine = ProcessEngine("m", entry, spawn=lambda: spawn_fake_worker(script, backends))
    await engine.start()
    return engine, backends


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[ProcessEngine, list[FakeLlama]]]:
    engine, backends = await start(tmp_path, FakeScript(reply_tokens=10, step_delay=0.002, sample=True))
    yield engine, backends
    await engine.stop()


async def outcome(engine: ProcessEngine, p: GenerationParams, cancel_after: int | None = None) -> dict[str, Any]:
    generation = engine.generate(p)
    texts: dict[int, str] = {}
    logprobs: list[str] = []
    result: dict[str, Any] = {"texts": texts, "logprobs": logprobs, "choices": []}
    deltas = 0
    async for event in generation:
        if isinstance(event, Started):
            result["prompt_tokens"] = event.prompt_tokens
        elif isinstance(event, Delta):
            texts[event.index] = texts.get(event.index, "") + event.text
            logprobs.extend(entry["token"] for entry in event.logprobs or [])
            deltas += 1
            if cancel_after is not None and deltas >= cancel_after:
                generation.cancel()
                result["cancelled"] = True
                return result
        elif isinstance(event, ChoiceFinished):
            result["choices"].append((event.index, event.finish_reason))
        elif isinstance(event, Finished):
            result["finished"] = event
    return result


MIXED = {
    "plain": params("tell me something"),
    "schema": params("answer in json", constraint={"json_schema": {"type": "object"}}),
    "tool": params("call the tool", constraint={"json_schema": {"type": "object"}}, tools=[{"type": "function"}]),
    "n3": params("three ways", n=3, max_tokens=4),
    "logprobs": params("with logprobs", logprobs=True, top_logprobs=2, max_tokens=3),
    "stopped": params("stop early", stop=["tok3"]),
    "sampled": params("random but seeded", temperature=0.9, seed=42),
}


async def test_mixed_concurrent_requests_each_as_if_alone(engine: tuple[ProcessEngine, list[FakeLlama]]) -> None:
    handle, backends = engine
    alone = {name: await outcome(handle, p) for name, p in MIXED.items()}
    steps_alone = len(backends[0].decodes)
    together = await asyncio.gather(
        *(outcome(handle, p) for p in MIXED.values()),
        outcome(handle, params("going away", max_tokens=100), cancel_after=2),
    )
    assert dict(zip(MIXED, together[:-1], strict=True)) == alone
    assert together[-1]["cancelled"]
    assert alone["schema"]["texts"] == {0: '{"ok": true}'}
    assert alone["n3"]["texts"] == {i: "tok0 tok1 tok2 tok3 " for i in range(3)}
    assert alone["n3"]["choices"] == [(0, "length"), (1, "length"), (2, "length")]
    assert alone["logprobs"]["logprobs"] == ["tok0 ", "tok1 ", "tok2 "]
    assert alone["stopped"]["texts"] == {0: "tok0 tok1 tok2 "}
    assert alone["stopped"]["finished"].finish_reason == "stop"
    # Together they shared steps: four requests at most (runtime.parallel) in one decode.
    batched = backends[0].decodes[steps_alone:]
    assert max(len({row.seq for row in rows}) for rows in batched) >= 4
    assert len(batched) < sum(len(r["texts"]) * 12 for r in together)
    await wait_until(lambda: (state := handle.batch_state()) is not None and state.running == 0)
    assert (state := handle.batch_state()) is not None and state.kv_used == 0


async def wait_until(condition: Any, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_prompt_too_long_fails_before_started(engine: tuple[ProcessEngine, list[FakeLlama]]) -> None:
    handle, _ = engine
    with pytest.raises(GatewayError) as caught:
        await outcome(handle, params(" ".join(["word"] * 200)))
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"


async def test_usage_reports_running_and_waiting(tmp_path: Path) -> None:
    handle, _ = await start(tmp_path, FakeScript(reply_tokens=100, step_delay=0.01), parallel=2)
    try:
        generations = [handle.generate(params(f"prompt {i}", max_tokens=50)) for i in range(3)]
        await wait_until(lambda: handle.batch_state() == BatchState(2, 1, 2 * (2 + 50), 256))
        state = handle.batch_state()
        assert state is not None and state.kv_usage == 104 / 256  # prompt and max_tokens of each, reserved
        for generation in generations:
            generation.cancel()
        await wait_until(lambda: handle.batch_state() == BatchState(0, 0, 0, 256))
    finally:
        await handle.stop()


async def test_a_crashing_worker_fails_every_running_request(tmp_path: Path) -> None:
    handle, _ = await start(tmp_path, FakeScript(reply_tokens=100, crash_after_steps=3))
    results = await asyncio.gather(
        *(outcome(handle, params(f"prompt {i}", max_tokens=50)) for i in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, GatewayError) and r.code == "model_worker_crashed" for r in results)
    assert not handle.alive
    await handle.stop()


class FailsOnThirdToken:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sample(self, row: int, *args: Any) -> int:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("llama_sampler_sample failed")
        return int(self.inner.sample(row, *args))


def refused(real: Any, settings: Any, seed: int) -> Any:
    raise TypeError("this function takes at least 5 arguments (4 given)")  # as the penalties sampler did


def fails_later(real: Any, settings: Any, seed: int) -> Any:
    return FailsOnThirdToken(real(settings, seed))


@pytest.mark.parametrize(
    ("broken", "says", "n"), [(refused, "could not start the request", 2), (fails_later, "sampling failed", 1)]
)
async def test_a_request_whose_sampler_fails_ends_alone(tmp_path: Path, broken: Any, says: str, n: int) -> None:
    """A sampler llama.cpp cannot build (a binding's signature changed), or one that raises mid-answer,
    fails its request in-band (500); the stream beside it finishes, every cell comes back, and the
    worker stays up and serves the next request."""
    handle, backends = await start(tmp_path, FakeScript(reply_tokens=30, step_delay=0.005))
    real = backends[0].sampler

    def sampler(settings: Any, seed: int) -> Any:
        return broken(real, settings, seed) if settings.presence_penalty else real(settings, seed)

    backends[0].sampler = sampler  # type: ignore[method-assign]
    try:
        running = asyncio.create_task(outcome(handle, params("a long answer", max_tokens=30)))
        await asyncio.sleep(0.02)
        with pytest.raises(GatewayError) as failed:
            await outcome(handle, params("penalised", presence_penalty=1.0, n=n, max_tokens=20))
        assert (failed.value.status, failed.value.code) == (500, "internal_error")
        assert says in failed.value.message
        done = await running
        assert done["finished"].completion_tokens == 30 and handle.alive
        after = await outcome(handle, params("and the next one"))
        assert after["finished"].finish_reason in ("stop", "length")
        await wait_until(lambda: handle.batch_state() == BatchState(0, 0, 0, 512))  # every cell came back
    finally:
        await handle.stop()
