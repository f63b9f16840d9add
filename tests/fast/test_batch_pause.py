"""A request paused in the worker's batch (preempted for an interactive one) and resumed: its cells
kept while room allows, else dropped and recomputed, and its answer the one it would have been.

The fake llama.cpp checks that every sequence writes its positions in order and counts cells, so a
replay that skipped or repeated a position fails there; sampled requests (temperature > 0, seeded)
show that the sampler's state survives the pause."""

from __future__ import annotations

from gateway.engine.base import ChoiceFinished, Finished
from gateway.engine.worker.backend import SamplerSettings
from gateway.engine.worker.batch import Batch
from gateway.testing.fakellama import FakeLlama
from tests.fast.test_batching import Recorder, make, request, run

SAMPLED = SamplerSettings(0.9, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0)


def steps(batch: Batch, backend: FakeLlama, n: int) -> None:
    for _ in range(n):
        batch.step()
        assert backend.used_cells() == batch.pool.ledger.used()


def twin(words: str, n: int = 1, limit: int = 12) -> Recorder:
    """The same request alone, never paused."""
    backend, batch, rec = make(slots=2, n_ctx=64, reply=40)
    batch.submit(request(backend, 1, words, n=n, limit=limit, settings=SAMPLED))
    run(batch, backend)
    return rec


def test_a_paused_request_takes_no_steps_keeps_its_cells_and_resumes_where_it_was() -> None:
    backend, batch, rec = make(slots=2, n_ctx=64, reply=40)
    batch.submit(request(backend, 1, "batch job prompt", limit=12, settings=SAMPLED))
    steps(batch, backend, 4)
    batch.pause(1)
    held = backend.used_cells()
    batch.submit(request(backend, 2, "interactive", limit=3))
    steps(batch, backend, 5)
    assert rec.finished(2) == Finished("length", 1, 3)
    assert all(row.seq != 0 or row.pos >= held for rows in backend.decodes[4:] for row in rows if row.seq == 0)
    assert rec.finished(1) is None and 1 in batch.paused
    batch.resume(1)
    run(batch, backend)
    assert rec.text(1) == twin("batch job prompt").text(1)


def test_paused_cells_are_dropped_for_room_and_recomputed_on_resume() -> None:
    backend, batch, rec = make(slots=2, n_ctx=16, reply=40)  # 32 cells
    prompt = "a b c d e"
    batch.submit(request(backend, 1, prompt, limit=10, settings=SAMPLED))
    steps(batch, backend, 4)  # the prompt and three tokens decoded
    batch.pause(1)
    batch.submit(request(backend, 2, "p q r s t u v w", limit=20))  # needs 28 of 32 cells: not beside it
    batch.step()
    assert batch.running[0].request.request_id == 2 and batch.paused[1].dropped
    assert backend.used_cells() == batch.pool.ledger.used() == 8  # request 2 alone: its prompt
    batch.resume(1)
    run(batch, backend)
    assert rec.finished(2) == Finished("length", 8, 20)
    assert rec.text(1) == twin(prompt, limit=10).text(1)
    assert not rec.errors()


def test_replay_restores_exactly_the_prompt_and_the_tokens_decoded() -> None:
    backend, batch, rec = make(slots=1, n_ctx=16, reply=40)
    prompt = backend.tokenize("one two three", True)
    batch.submit(request(backend, 1, "one two three", limit=8, settings=SAMPLED))
    steps(batch, backend, 4)
    decoded = [row.token for rows in backend.decodes[1:4] for row in rows]
    batch.pause(1)
    batch.submit(request(backend, 2, "x y z w v u t s r q", limit=6))
    run(batch, backend)  # 2 needs the room: 1's cells go
    assert batch.paused[1].dropped
    before = len(backend.decodes)
    batch.resume(1)
    batch.step()
    replay = [row for row in backend.decodes[before] if not row.logits]
    assert [row.token for row in replay] == [*prompt, *decoded]
    assert [row.pos for row in replay] == list(range(len(prompt) + len(decoded)))
    assert batch.replayed_tokens == len(replay)
    run(batch, backend)
    assert rec.text(1) == twin("one two three", limit=8).text(1)


def test_n_choices_survive_a_drop() -> None:
    backend, batch, rec = make(slots=2, n_ctx=32, reply=40)  # 64 cells
    batch.submit(request(backend, 1, "several choices", n=3, limit=8, settings=SAMPLED))
    steps(batch, backend, 3)
    batch.pause(1)
    batch.submit(request(backend, 2, " ".join(f"w{i}" for i in range(20)), limit=40))
    batch.step()
    assert batch.paused[1].dropped
    batch.resume(1)
    run(batch, backend)
    alone = twin("several choices", n=3, limit=8)
    assert [rec.text(1, i) for i in range(3)] == [alone.text(1, i) for i in range(3)]
    finished = [e for r, e in rec.events if r == 1 and isinstance(e, ChoiceFinished)]
    assert sorted(c.index for c in finished) == [0, 1, 2]


def test_a_request_paused_before_it_was_placed_starts_when_resumed() -> None:
    backend, batch, rec = make(slots=1, n_ctx=64, reply=5)
    batch.submit(request(backend, 1, "first", limit=5))
    batch.submit(request(backend, 2, "second", limit=5))
    batch.pause(2)
    run(batch, backend)
    assert rec.finished(2) is None
    batch.resume(2)
    run(batch, backend)
    assert rec.finished(2) == Finished("length", 1, 5)


def test_cancelling_a_paused_request_ends_it_and_frees_its_cells() -> None:
    backend, batch, rec = make(slots=1, n_ctx=64, reply=40)
    batch.submit(request(backend, 1, "to be cancelled", limit=20))
    steps(batch, backend, 3)
    batch.pause(1)
    batch.cancel(1)
    run(batch, backend)
    finished = rec.finished(1)
    assert finished is not None and finished.finish_reason == "cancelled"
    assert not batch.paused and backend.used_cells() == 0


def test_pausing_an_unknown_or_finished_request_changes_nothing() -> None:
    backend, batch, _ = make(slots=1)
    batch.submit(request(backend, 1, "short", limit=2))
    run(batch, backend)
    batch.pause(1)
    batch.pause(99)
    batch.resume(99)
    assert not batch.paused and batch.idle
