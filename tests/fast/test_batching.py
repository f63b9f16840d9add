"""The worker's continuous batch, run step by step over the fake llama.cpp (which checks positions
and counts KV cells on its own, so the loop's bookkeeping is held against an independent model)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.engine.base import ChoiceFinished, Delta, Finished
from gateway.engine.sizing import MAX_SEQUENCES, batch_size, sequence_ids
from gateway.engine.worker.backend import SamplerSettings
from gateway.engine.worker.batch import Batch
from gateway.engine.worker.kv import KvLedger, PrefixCache
from gateway.engine.worker.sequences import Request
from gateway.errors import GatewayError
from gateway.testing.fakellama import FakeLlama, FakeScript

GREEDY = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[int, Any]] = []

    def __call__(self, request_id: int, event: Any) -> None:
        self.events.append((request_id, event))

    def text(self, request_id: int, index: int = 0) -> str:
        return "".join(e.text for r, e in self.events if r == request_id and isinstance(e, Delta) and e.index == index)

    def finished(self, request_id: int) -> Finished | None:
        return next((e for r, e in self.events if r == request_id and isinstance(e, Finished)), None)

    def errors(self) -> list[tuple[int, GatewayError]]:
        return [(r, e) for r, e in self.events if isinstance(e, GatewayError)]


def make(slots: int = 2, n_ctx: int = 64, n_batch: int = 16, reply: int = 5) -> tuple[FakeLlama, Batch, Recorder]:
    backend = FakeLlama(n_ctx=n_ctx, slots=slots, n_batch=n_batch, script=FakeScript(reply_tokens=reply, sample=True))
    recorder = Recorder()
    return backend, Batch(backend, slots, recorder, recorder), recorder


def request(backend: FakeLlama, request_id: int, words: str, n: int = 1, limit: int = 20, **overrides: Any) -> Request:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "prompt": backend.tokenize(words, True),
        "n": n,
        "limit": limit,
        "settings": GREEDY,
        "seed": 1,
        "stops": [],
        "delta_interval": 0.0,
        "top_logprobs": None,
    }
    fields.update(overrides)
    return Request(**fields)


def run(batch: Batch, backend: FakeLlama, limit: int = 200) -> None:
    for _ in range(limit):
        if batch.idle:
            break
        batch.step()
        assert backend.used_cells() == batch.pool.ledger.used()
    assert batch.idle


def test_requests_decode_together_one_decode_per_step() -> None:
    backend, batch, rec = make(slots=3)
    for i in range(3):
        batch.submit(request(backend, i, f"prompt number {i}"))
    run(batch, backend)
    assert all(rec.text(i) == "tok0 tok1 tok2 tok3 tok4 " for i in range(3))
    # Step 1 prefills all three prompts; then each step carries one token of every sequence.
    assert [len(rows) for rows in backend.decodes[:5]] == [9, 3, 3, 3, 3]
    assert {rows[0].seq for rows in backend.decodes[1:5]} == {0}


def test_a_waiting_request_joins_between_steps_and_a_finished_one_leaves_at_once() -> None:
    backend, batch, rec = make(slots=2)
    batch.submit(request(backend, 1, "a b c", limit=2))
    batch.submit(request(backend, 2, "d e f", limit=10))
    batch.submit(request(backend, 3, "g h i", limit=10))
    batch.step()  # 1 and 2 prefill; 3 waits for a slot
    assert [job.request.request_id for job in batch.running] == [1, 2]
    batch.step()  # 1 reaches its limit and leaves
    assert rec.finished(1) == Finished("length", 3, 2)
    batch.step()  # 3 joins while 2 is still generating
    assert [job.request.request_id for job in batch.running] == [2, 3]
    assert rec.finished(2) is None
    run(batch, backend)
    assert rec.text(3) == "tok0 tok1 tok2 tok3 tok4 "


def test_a_long_prompt_is_prefilled_in_chunks_that_share_steps_with_streams() -> None:
    backend, batch, rec = make(slots=2, n_ctx=256, n_batch=8, reply=50)
    batch.submit(request(backend, 1, "short", limit=30))
    batch.step()
    batch.submit(request(backend, 2, " ".join(f"w{i}" for i in range(40)), limit=3))
    for _ in range(6):
        batch.step()
    # Each step decodes request 1's next token and fills the rest of the batch with the prompt.
    assert all(len(rows) <= 8 for rows in backend.decodes)
    assert all(any(row.seq == batch_seq(batch, 1) for row in rows) for rows in backend.decodes[1:6])
    assert rec.text(1).count("tok") == 7
    run(batch, backend)
    assert rec.finished(2) == Finished("length", 40, 3)


def batch_seq(batch: Batch, request_id: int) -> int:
    return next(j.primary.seq for j in batch.running if j.request.request_id == request_id)


def test_admission_waits_for_kv_room_instead_of_filling_the_pool() -> None:
    backend, batch, rec = make(slots=4, n_ctx=16, reply=50)  # 64 cells
    for i in range(4):
        batch.submit(request(backend, i, "p q r s t u", limit=10))  # each may need 16 cells
    batch.step()
    assert len(batch.running) == 4 and batch.committed() <= backend.kv_cells
    run(batch, backend)
    assert not rec.errors()
    assert all(rec.finished(i) == Finished("length", 6, 10) for i in range(4))


def test_admission_evicts_cached_prefixes_for_room() -> None:
    backend, batch, rec = make(slots=1, n_ctx=32)
    batch.submit(request(backend, 1, " ".join(f"a{i}" for i in range(20)), limit=5))
    run(batch, backend)
    assert len(batch.pool.cache) == 1 and backend.used_cells() > 0  # the finished sequence stays cached
    batch.submit(request(backend, 2, " ".join(f"b{i}" for i in range(20)), limit=10))
    run(batch, backend)
    assert rec.finished(2) == Finished("stop", 20, 5)
    assert backend.used_cells() <= backend.kv_cells


def test_prefix_reuse_copies_cached_cells_instead_of_recomputing() -> None:
    backend, batch, rec = make(slots=1, n_ctx=128, n_batch=64)
    system = " ".join(f"s{i}" for i in range(50))
    batch.submit(request(backend, 1, system + " first question", seed=None))
    run(batch, backend)
    first = len(backend.decodes[0])
    batch.submit(request(backend, 2, system + " second question", seed=None))
    decodes_before = len(backend.decodes)
    run(batch, backend)
    assert first == 52
    assert len(backend.decodes[decodes_before]) == 2  # only what follows the shared 50 tokens
    assert batch.reused_tokens == 50
    assert rec.finished(1).cached_tokens == 0 and rec.finished(2).cached_tokens == 50  # reported as cached
    # A seeded request evaluates its whole prompt: its output depends on seed, prompt and settings only.
    batch.submit(request(backend, 3, system + " third question", seed=5))
    decodes_before = len(backend.decodes)
    run(batch, backend)
    assert len(backend.decodes[decodes_before]) == 52 and batch.reused_tokens == 50
    assert rec.text(2) == rec.text(1)


def test_a_seeded_request_on_an_idle_worker_starts_from_an_empty_pool() -> None:
    """As on a freshly loaded worker: its KV cells (so llama.cpp's sums over them) do not depend on
    what ran before. Unseeded requests keep the cached prefixes."""
    backend, batch, rec = make(slots=2, n_ctx=64, n_batch=32)
    batch.submit(request(backend, 1, "a b c d", seed=None))
    run(batch, backend)
    batch.submit(request(backend, 2, "e f g", seed=None))
    run(batch, backend)
    assert len(batch.pool.cache) == 2 and backend.used_cells() > 0
    seeded = request(backend, 3, "a b c d", seed=7)
    batch.submit(seeded)
    batch.step()
    assert len(batch.pool.cache) == 0 and batch.running[0].primary.seq == 0
    assert backend.used_cells() == batch.pool.ledger.used() == len(seeded.prompt)  # its own prompt only
    assert batch.reused_tokens == 0
    run(batch, backend)
    assert rec.text(3) == rec.text(1)


def test_prefix_reuse_from_a_running_request() -> None:
    backend, batch, rec = make(slots=2, n_ctx=128, n_batch=64, reply=20)
    system = " ".join(f"s{i}" for i in range(30))
    batch.submit(request(backend, 1, system + " one", seed=None))
    batch.step()
    batch.submit(request(backend, 2, system + " two", seed=None))
    batch.step()
    assert len(backend.decodes[1]) == 1 + 1  # request 1's token and request 2's last word
    run(batch, backend)
    assert rec.text(1) == rec.text(2)


def test_n_choices_are_sequences_sharing_the_prompt() -> None:
    backend, batch, rec = make(slots=1)
    batch.submit(request(backend, 1, "x y z", n=3, limit=4))
    batch.step()
    assert backend.used_cells() == 3  # the prompt once
    run(batch, backend)
    assert [rec.text(1, i) for i in range(3)] == ["tok0 tok1 tok2 tok3 "] * 3
    choices = [e for r, e in rec.events if isinstance(e, ChoiceFinished)]
    assert [(c.index, c.finish_reason, c.completion_tokens) for c in choices] == [(i, "length", 4) for i in range(3)]
    assert rec.finished(1) == Finished("stop", 3, 12)


def test_cancel_leaves_at_once_and_frees_cells() -> None:
    backend, batch, rec = make(slots=2, reply=50)
    batch.submit(request(backend, 1, "a b", limit=40))
    batch.submit(request(backend, 2, "c d", limit=40))
    for _ in range(3):
        batch.step()
    batch.cancel(1)
    batch.step()
    assert rec.finished(1) == Finished("cancelled", 2, 3)  # a token per step
    assert [job.request.request_id for job in batch.running] == [2]
    assert all(row.seq != 0 for row in backend.decodes[-1])
    assert backend.seq_length(0) == 0  # a cancelled sequence is not cached
    batch.cancel(2)
    run(batch, backend)


def test_cancel_while_waiting() -> None:
    backend, batch, rec = make(slots=1)
    batch.submit(request(backend, 1, "a", limit=3))
    batch.submit(request(backend, 2, "b", limit=3))
    batch.cancel(2)
    run(batch, backend)
    assert rec.finished(2) == Finished("cancelled", 1, 0)
    assert rec.text(2) == ""


def test_per_sequence_stops_limits_logprobs_and_bias() -> None:
    backend, batch, rec = make(slots=3, reply=8)
    bias = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0, logit_bias={3: 100.0})
    batch.submit(request(backend, 1, "a", stops=["tok2"]))
    batch.submit(request(backend, 2, "b", top_logprobs=2, limit=2))
    batch.submit(request(backend, 3, "c", settings=bias, limit=3))
    run(batch, backend)
    assert rec.text(1) == "tok0 tok1 " and rec.finished(1) == Finished("stop", 1, 3, stop_sequence="tok2")
    entries = [entry for r, e in rec.events if r == 2 and isinstance(e, Delta) for entry in e.logprobs or []]
    assert [e["token"] for e in entries] == ["tok0 ", "tok1 "]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] < 0 for e in entries)
    assert rec.text(3) == "tok2 tok2 tok2 "  # token 3 is "tok2 ", biased to always win


def test_grammar_constrained_sequence_beside_plain_ones() -> None:
    backend, batch, rec = make(slots=2)
    constrained = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0, grammar="fake-json")
    batch.submit(request(backend, 1, "json please", settings=constrained))
    batch.submit(request(backend, 2, "plain please"))
    run(batch, backend)
    assert rec.text(1) == '{"ok": true}'
    assert rec.text(2) == "tok0 tok1 tok2 tok3 tok4 "


def test_sequence_ids_are_reused_densely() -> None:
    backend, batch, _ = make(slots=2)
    for i in range(6):
        batch.submit(request(backend, i, f"distinct prompt {i}", limit=2))
    run(batch, backend)
    assert max(row.seq for rows in backend.decodes for row in rows) < 4


def test_kv_ledger_counts_shared_prefixes_once() -> None:
    ledger = KvLedger(100)
    ledger.extend(0, 10)
    ledger.share(0, 1, 6)
    ledger.extend(1, 3)
    ledger.extend(0, 2)
    assert ledger.used() == 12 + 3 and ledger.used({1}) == 9
    ledger.drop(0)
    assert ledger.used() == 9


def test_prefix_cache_drops_entries_a_longer_one_covers() -> None:
    cache = PrefixCache()
    cache.add(0, [1, 2, 3])
    assert cache.add(1, [1, 2, 3, 4]) == [0]
    assert cache.best([1, 2, 9]) == (1, 2)
    assert cache.oldest(keep=1) is None


def test_a_choice_that_ends_early_frees_its_sequence_once() -> None:
    """Its id may go to the next request at once; the end of its own request must not free it again."""
    backend, batch, rec = make(slots=2, reply=50)
    hot = SamplerSettings(0.9, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0)
    # With seed 1 the fake's draws end choice 1 at the first step, choice 0 twenty steps later.
    batch.submit(request(backend, 1, "a b", n=2, limit=30, stops=["tok3"], settings=hot, seed=1))
    batch.step()
    batch.step()
    assert [e.index for _, e in rec.events if isinstance(e, ChoiceFinished)] == [1]
    batch.submit(request(backend, 2, "c d", limit=40))
    batch.step()
    assert batch_seq(batch, 2) == 1  # the id choice 1 gave back
    run(batch, backend)
    assert rec.finished(2) == Finished("length", 2, 40)


@pytest.mark.parametrize(
    ("n_batch", "slots", "cells"),
    [(512, 1, 2048), (8, 3, 900), (100, 64, 32768), (1, 1, 16), (1, 1, 17), (4096, 4, 1024)],
)
def test_the_batch_holds_a_row_per_sequence_id_and_fits_the_pool(n_batch: int, slots: int, cells: int) -> None:
    """llama.cpp aborts a load whose batch holds fewer rows than sequence ids, and caps the batch at
    the pool's cells: the worker's sizes (and the memory estimate's, the same functions) obey both."""
    ids = sequence_ids(slots, cells)
    size = batch_size(n_batch, cells, ids)
    assert ids <= size <= cells
    assert size == min(n_batch, cells) or size == ids  # the configured batch unless it is too small
    assert ids >= min(cells, MAX_SEQUENCES)  # room for n = 16 choices where the pool allows it
