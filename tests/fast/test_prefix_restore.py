"""Prefixes kept across unloads, in the worker: a batch saves its cached prefixes (worker/saved.py), a
later batch over a fresh fake llama.cpp loads one into a sequence of its own and evaluates only the
rest of the prompt, with the answer a cold worker gives; and the worker saves when told to shut down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ModelEntry, PrefixStore
from gateway.engine.base import BatchState, Finished
from gateway.engine.prefixstore.store import PrefixStore as Store
from gateway.engine.process.handle import ProcessEngine
from gateway.engine.worker.batch import Batch
from gateway.engine.worker.saved import SavedPrefixes
from gateway.testing.fakellama import FakeLlama, FakeScript
from gateway.testing.fakeworker import spawn_fake_worker
from tests.fast.test_batching import Recorder, request
from tests.fast.test_worker_loop import outcome, params

SYSTEM = " ".join(f"w{i}" for i in range(40))  # the shared system prompt: 40 tokens


def make(store: Path, slots: int = 2, n_ctx: int = 96) -> tuple[FakeLlama, Batch, Recorder, SavedPrefixes]:
    backend = FakeLlama(n_ctx=n_ctx, slots=slots, n_batch=16, script=FakeScript(reply_tokens=5))
    saved = SavedPrefixes(
        Store(store, b'{"model":"fake"}', 10**9), backend, min_tokens=8, save_max_bytes=10**9, save_time=5.0
    )
    recorder = Recorder()
    return backend, Batch(backend, slots, recorder, recorder, saved=saved), recorder, saved


def run(batch: Batch, backend: FakeLlama) -> None:
    for _ in range(300):
        if batch.idle:
            break
        batch.step()
        assert backend.used_cells() == batch.pool.ledger.used()
    assert batch.idle


def saved_of(batch: Batch) -> SavedPrefixes:
    assert batch.saved is not None
    return batch.saved


def answered(tmp_path: Path, *prompts: str, seed: int | None = None) -> tuple[FakeLlama, Batch, Recorder]:
    """A fresh worker's batch over the store, after answering `prompts` one by one."""
    backend, batch, rec, _ = make(tmp_path)
    for i, words in enumerate(prompts):
        batch.submit(request(backend, i, words, seed=seed))
        run(batch, backend)
    return backend, batch, rec


def test_a_stored_prefix_is_restored_and_only_the_rest_evaluated(tmp_path: Path) -> None:
    backend, batch, rec = answered(tmp_path, f"{SYSTEM} first question", seed=None)
    files, written = saved_of(batch).save(batch.cached())
    assert files == 1 and written > 0
    # A new worker: the same system prompt, another question.
    backend, batch, rec, saved = make(tmp_path)
    # Words seen before: the fake numbers new words in order of appearance, as the first worker did.
    prompt = request(backend, 1, f"{SYSTEM} w0 w1", seed=None)
    batch.submit(prompt)
    batch.step()
    assert saved.restored == 1 and saved.restored_tokens == 47  # the system prompt, question and answer
    [(restored_seq, _)] = backend.restores
    assert backend.tokens_in(restored_seq)[:40] == prompt.prompt[:40]
    first = backend.decodes[0]
    assert [row.pos for row in first] == [40, 41]  # only the rest of the prompt
    assert backend.tokens_in(batch.running[0].primary.seq) == prompt.prompt
    run(batch, backend)
    assert batch.reused_tokens == 40
    assert rec.text(1) == "tok0 tok1 tok2 tok3 tok4 "
    assert rec.finished(1) == Finished("stop", len(prompt.prompt), 5, cached_tokens=40)  # restored: cached


def test_a_seeded_request_evaluates_its_whole_prompt(tmp_path: Path) -> None:
    _, batch, _ = answered(tmp_path, f"{SYSTEM} first question")
    saved_of(batch).save(batch.cached())
    backend, batch, _, saved = make(tmp_path)
    batch.submit(request(backend, 1, f"{SYSTEM} first other", seed=3))
    run(batch, backend)
    assert saved.restored == 0 and backend.restores == []
    assert backend.decodes[0][0].pos == 0 and batch.reused_tokens == 0


def test_a_state_llama_cpp_refuses_is_not_used_and_costs_nothing(tmp_path: Path) -> None:
    backend, _, _, saved = make(tmp_path)
    tokens = backend.tokenize(f"{SYSTEM} first question", True)
    saved.store.save(tokens, b"not a state llama.cpp wrote")  # a sound file around a state it refuses
    batch = Batch(backend, 2, Recorder(), Recorder(), saved=saved)
    batch.submit(request(backend, 1, f"{SYSTEM} first other", seed=None))
    run(batch, backend)
    assert saved.restored == 0 and backend.decodes[0][0].pos == 0
    assert batch.pool.free_ids == backend.max_sequences - len(batch.pool.cache)  # the id it tried went back


def test_no_restore_without_room_for_it(tmp_path: Path) -> None:
    _, batch, _ = answered(tmp_path, f"{SYSTEM} first question")
    saved_of(batch).save(batch.cached())
    backend, batch, rec, saved = make(tmp_path, slots=1, n_ctx=64)
    batch.submit(request(backend, 1, f"{SYSTEM} first other", seed=None, limit=20))
    run(batch, backend)  # 47 restored cells + 22 to evaluate and 20 to write do not fit 64
    assert saved.restored == 0 and rec.finished(1) is not None


def test_cached_prompts_make_room_for_a_restore(tmp_path: Path) -> None:
    _, batch, _ = answered(tmp_path, f"{SYSTEM} first question")
    saved_of(batch).save(batch.cached())
    backend, batch, rec, saved = make(tmp_path, slots=1, n_ctx=96)
    unrelated = " ".join(f"u{i}" for i in range(50))  # numbered after the system prompt's words
    tokens = backend.tokenize(f"{SYSTEM} {unrelated}", True)[40:]
    batch.submit(request(backend, 1, "", prompt=tokens, seed=None, limit=5))
    run(batch, backend)
    assert len(batch.pool.cache) == 1 and backend.used_cells() == 54
    batch.submit(request(backend, 2, f"{SYSTEM} w0 w1", seed=None, limit=5))
    run(batch, backend)  # 47 restored cells + 7 to evaluate and write, beside 54 cached: those go
    assert saved.restored == 1 and batch.reused_tokens == 40
    assert rec.text(2) == "tok0 tok1 tok2 tok3 tok4 "


def test_what_is_saved_is_shared_once_and_bounded(tmp_path: Path) -> None:
    _, batch, _ = answered(tmp_path, f"{SYSTEM} one", f"{SYSTEM} two")
    cached = batch.cached()
    assert len(cached) == 2 and cached[0].hits == 1 and cached[0].shared == 40
    assert saved_of(batch).save(cached)[0] == 1
    [stored] = saved_of(batch).store.entries()
    assert len(stored.tokens) == 40  # the part both shared, once
    _, batch, _ = answered(tmp_path / "small", f"{SYSTEM} one")
    saved_of(batch)._save_max_bytes = 10
    assert saved_of(batch).save(batch.cached()) == (0, 0)


pytestmark = pytest.mark.anyio


async def test_a_worker_saves_when_told_to_unload_and_the_next_restores(tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"GGUF fake weights")
    entry = ModelEntry.model_validate(
        {"model": {"path": str(tmp_path / "fake.gguf"), "n_ctx": 128}, "runtime": {"parallel": 2}}
    )
    store = PrefixStore(path=tmp_path / "prefixes", min_tokens=8)
    script = FakeScript(reply_tokens=6)

    async def start() -> tuple[ProcessEngine, list[FakeLlama]]:
        backends: list[FakeLlama] = []
        engine = ProcessEngine("m", entry, spawn=lambda: spawn_fake_worker(script, backends), prefix_store=store)
        await engine.start()
        return engine, backends

    unseeded: dict[str, Any] = {"seed": None}
    engine, _ = await start()
    cold = await outcome(engine, params(f"{SYSTEM} one", **unseeded))
    await engine.stop()  # Shutdown: the worker saves, then exits
    assert len(list((tmp_path / "prefixes").glob("*.kv"))) == 1
    engine, backends = await start()
    warm = await outcome(engine, params(f"{SYSTEM} one", **unseeded))
    state = engine.batch_state()
    assert isinstance(state, BatchState) and state.restored == 1 and state.restored_tokens > 40
    assert backends[0].restores and warm["texts"] == cold["texts"]
    await engine.stop()
