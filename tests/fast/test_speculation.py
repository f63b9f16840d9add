"""Speculative decoding in the batch loop, over the fake llama.cpp (which checks every position a
sequence writes and counts cells on its own): drafts verified in the batch's decode give exactly the
plain loop's output, whatever is accepted; rejected tokens leave no cell, no ledger entry, no trace
in the sampler or grammar; stops, limits, n > 1, log probabilities and pauses hold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.engine.base import ChoiceFinished, Delta, Finished
from gateway.engine.worker.backend import SamplerSettings
from gateway.engine.worker.batch import Batch
from gateway.engine.worker.sequences import Request
from gateway.engine.worker.speculation import MAX_SPECULATING, Speculation
from gateway.testing.fakellama import EOS, JSON_BASE, REPLY_BASE, FakeLlama, FakeScript

GREEDY = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0)
SAMPLED = SamplerSettings(0.9, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0)
WRONG = 3000  # a token the fake model never predicts


def truth(tokens: Sequence[int], reply: int, limit: int) -> list[int]:
    """What the fake model says after `tokens`: tok(k+1) after tok(k), the first reply token after a
    word, EOS after the last."""
    last, out = tokens[-1], []
    k = last - REPLY_BASE + 1 if REPLY_BASE <= last < JSON_BASE else 0
    while len(out) < limit:
        out.append(REPLY_BASE + k if k < reply else EOS)
        if k >= reply:
            break
        k += 1
    return out


class ScriptedDrafter:
    """A draft model whose guesses are right except at position `wrong_at` of each draft."""

    def __init__(self, reply: int, wrong_at: int | None = None, max_tokens: int = 4) -> None:
        self.reply, self.wrong_at, self.max_tokens = reply, wrong_at, max_tokens
        self.proposed: list[list[int]] = []
        self.kept: list[set[int]] = []

    def propose(self, seq: int, tokens: Sequence[int], limit: int) -> list[int]:
        draft = truth(tokens, self.reply, limit)
        if self.wrong_at is not None and self.wrong_at < len(draft):
            draft[self.wrong_at] = WRONG
        self.proposed.append(draft)
        return draft

    def forget(self, keep: set[int]) -> None:
        self.kept.append(keep)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[int, Any]] = []

    def __call__(self, request_id: int, event: Any) -> None:
        self.events.append((request_id, event))

    def outcome(self) -> list[tuple[int, Any]]:
        """Text per request and choice, log probability entries, and how each ended."""
        text: dict[tuple[int, int], str] = {}
        entries: dict[tuple[int, int], list[Any]] = {}
        ends = []
        for request_id, event in self.events:
            if isinstance(event, Delta):
                key = (request_id, event.index)
                text[key] = text.get(key, "") + event.text
                entries.setdefault(key, []).extend(event.logprobs or [])
            elif isinstance(event, ChoiceFinished | Finished):
                ends.append((request_id, event))
            else:
                ends.append((request_id, repr(event)))
        ends.sort(key=lambda end: (end[0], repr(end[1])))  # a faster request may end first
        return sorted(text.items()) + sorted(entries.items(), key=str) + ends  # type: ignore[return-value]


def make_request(backend: FakeLlama, request_id: int, prompt: list[int] | None = None, **fields: Any) -> Request:
    values: dict[str, Any] = {
        "request_id": request_id,
        "prompt": prompt if prompt is not None else backend.tokenize(f"prompt {request_id}", True),
        "n": 1,
        "limit": 30,
        "settings": GREEDY,
        "seed": 7,
        "stops": [],
        "delta_interval": 0.0,
        "top_logprobs": None,
    }
    values.update(fields)
    return Request(**values)


def run(
    speculation: Speculation | None,
    requests: list[dict[str, Any]],
    reply: int = 12,
    slots: int = 2,
    n_ctx: int = 96,
    n_batch: int = 32,
    between: Any = None,
) -> tuple[list[tuple[int, Any]], FakeLlama, Batch]:
    backend = FakeLlama(n_ctx=n_ctx, slots=slots, n_batch=n_batch, script=FakeScript(reply_tokens=reply, sample=True))
    recorder = Recorder()
    batch = Batch(backend, slots, recorder, recorder, speculation=speculation)
    for i, fields in enumerate(requests):
        batch.submit(make_request(backend, i, **fields))
    for step in range(300):
        if batch.idle:
            break
        if between is not None:
            between(batch, step)
        batch.step()
        assert backend.used_cells() == batch.pool.ledger.used()  # rejected cells removed, the ledger exact
        assert batch.committed() <= batch.pool.cells
    assert batch.idle
    return recorder.outcome(), backend, batch


def same_as_plain(speculation: Speculation, requests: list[dict[str, Any]], **kwargs: Any) -> FakeLlama:
    plain, _, _ = run(None, requests, **kwargs)
    fast, backend, _ = run(speculation, requests, **kwargs)
    assert fast == plain
    assert any(end for _, end in fast)
    return backend


def ngram(lookahead: int = 8, min_n: int = 1, max_n: int = 3) -> Speculation:
    return Speculation({"ngram": {"min": min_n, "max": max_n, "lookahead": lookahead}})


def copying_prompt(backend_words: int = 3, reply: int = 12) -> list[int]:
    """A prompt that holds the answer the fake model gives (its reply tokens), then a word: the
    answer copies the prompt, as an edit does."""
    return [REPLY_BASE + k for k in range(reply)] + [5000 + i for i in range(backend_words)]


def test_ngram_drafts_from_the_prompt_are_accepted_and_save_steps() -> None:
    requests = [{"prompt": copying_prompt()}]
    spec = ngram()
    backend = same_as_plain(spec, requests)
    plain_steps = len(run(None, requests)[1].decodes)
    assert len(backend.decodes) < plain_steps - 4
    # The copy is exact until the answer ends, where the prompt goes on with words the model does not say.
    assert spec.drafted > 0 and spec.accepted >= spec.drafted - 2
    assert max(len(rows) for rows in backend.decodes[1:]) > 1  # verified in one decode with the pending token


def test_a_rejection_at_each_position_keeps_the_plain_output_and_no_rejected_cell() -> None:
    for wrong_at in range(5):
        drafter = ScriptedDrafter(reply=12, wrong_at=wrong_at, max_tokens=4)
        spec = Speculation(None, drafter)
        same_as_plain(spec, [{}])
        assert drafter.proposed and spec.drafted > 0
        # Accepted: drafted tokens kept in the sequence (an end of generation ends it instead).
        expected = sum(len([t for t in d[:wrong_at] if t != EOS]) for d in drafter.proposed)
        assert spec.accepted == expected, wrong_at


def test_rows_of_a_draft_follow_the_pending_token_with_logits() -> None:
    drafter = ScriptedDrafter(reply=12, wrong_at=2, max_tokens=4)
    _, backend, batch = run(Speculation(None, drafter), [{}])
    verifying = [rows for rows in backend.decodes if len({r.seq for r in rows}) == 1 and len(rows) > 1][1:]
    assert verifying
    for rows in verifying:
        positions = [r.pos for r in rows]
        assert positions == list(range(positions[0], positions[0] + len(rows))) and all(r.logits for r in rows)
    assert batch.pool.ledger.used() == backend.used_cells()


def test_stops_and_limits_inside_a_draft_end_the_choice_as_plain_decoding_does() -> None:
    drafter = ScriptedDrafter(reply=12, max_tokens=6)
    same_as_plain(Speculation(None, drafter), [{"limit": 5}, {"limit": 7}])
    same_as_plain(Speculation(None, ScriptedDrafter(reply=12, max_tokens=6)), [{"stops": ["tok4"]}])
    same_as_plain(ngram(), [{"prompt": copying_prompt(), "stops": ["tok6 tok"]}])
    # The end of generation inside a draft: the reply ends within the drafted span.
    same_as_plain(Speculation(None, ScriptedDrafter(reply=6, max_tokens=8)), [{}], reply=6)


def test_a_grammar_never_sees_a_rejected_token() -> None:
    # The fake's constrained sampler spells {"ok": true} one piece per call whatever the logits: a
    # rejected draft token sampled or accepted by it would skip a piece.
    grammar = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0, grammar="fake-json")
    for wrong_at in (0, 1, None):
        spec = Speculation(None, ScriptedDrafter(reply=12, wrong_at=wrong_at, max_tokens=4))
        outcome, _, _ = run(spec, [{"settings": grammar}])
        assert outcome[0] == ((0, 0), '{"ok": true}')
        assert spec.drafted > 0


def test_n_choices_sampled_with_a_seed_are_the_plain_ones() -> None:
    requests = [{"n": 2, "settings": SAMPLED, "limit": 10}, {"settings": SAMPLED, "seed": 3}]
    for wrong_at in (0, 2, None):
        spec = Speculation(None, ScriptedDrafter(reply=12, wrong_at=wrong_at, max_tokens=4))
        same_as_plain(spec, requests, slots=2, n_ctx=96)
        assert spec.drafted > 0


def test_log_probabilities_are_read_from_each_tokens_own_row() -> None:
    spec = ngram()
    same_as_plain(spec, [{"prompt": copying_prompt(), "top_logprobs": 2}])
    assert spec.accepted > 0


def test_a_paused_request_resumes_to_the_same_answer() -> None:
    def pause_and_resume(batch: Batch, step: int) -> None:
        if step == 4:
            batch.pause(0)
        if step == 7:
            batch.resume(0)

    spec = ngram()
    same_as_plain(spec, [{"prompt": copying_prompt()}, {}], between=pause_and_resume)
    assert spec.accepted > 0


def test_drafts_fit_the_kv_reservation_of_a_full_pool() -> None:
    # Two requests whose reservations fill the pool exactly: a draft beyond a request's reservation
    # would make the fake's decode fail for want of cells (and the run assert).
    prompt = copying_prompt(reply=12)
    spec = ngram(lookahead=16)
    same_as_plain(spec, [{"prompt": prompt, "limit": 16}, {"prompt": prompt, "limit": 16}], n_ctx=31, slots=2)


def test_speculation_yields_when_more_sequences_decode() -> None:
    requests = [{"prompt": copying_prompt(), "limit": 4 + 4 * i} for i in range(MAX_SPECULATING + 1)]
    spec = ngram()
    backend = same_as_plain(spec, requests, slots=MAX_SPECULATING + 1, n_ctx=64)
    # While all of them decode, each step has one row per sequence; drafts come once some finished.
    decoding = [rows for rows in backend.decodes if all(r.logits for r in rows)]
    together = [rows for rows in decoding if len({r.seq for r in rows}) == MAX_SPECULATING + 1]
    assert len(together) >= 3 and all(len(rows) == MAX_SPECULATING + 1 for rows in together)
    assert any(len(rows) > len({r.seq for r in rows}) for rows in decoding)


def test_a_choice_that_keeps_missing_stops_drafting_then_probes() -> None:
    drafter = ScriptedDrafter(reply=40, wrong_at=0, max_tokens=4)
    spec = Speculation(None, drafter)
    same_as_plain(spec, [{"limit": 40}], reply=40)
    assert spec.accepted == 0
    # Every miss shrinks the draft to one token, and under the minimum rate most steps draft nothing.
    assert spec.drafted < 40 // 2


def test_with_both_the_draft_model_fills_in_where_the_ngram_lookup_finds_nothing() -> None:
    drafter = ScriptedDrafter(reply=12, max_tokens=4)
    both = Speculation({"ngram": {"min": 1, "max": 3, "lookahead": 8}}, drafter)
    same_as_plain(both, [{"prompt": copying_prompt()}])
    copying = len(drafter.proposed)
    drafter.proposed.clear()
    same_as_plain(Speculation({"ngram": {"min": 1, "max": 3, "lookahead": 8}}, drafter), [{}])
    assert drafter.proposed and copying < len(drafter.proposed)  # the prompt's copy drafted most tokens
    assert all(keep <= {0, 1} for keep in drafter.kept)  # it forgets sequences that no longer decode


def reasoning_run(speculation: Speculation | None, reply: list[str], budget: int | None, **script: Any) -> Any:
    """A reasoning request (json_schema, thinking budget) on the fake; its text and what its sampler
    took and its grammar consumed."""
    from gateway.engine.worker.sequences import Thinking

    backend = FakeLlama(script=FakeScript(reply=reply, grammar_holds=True, **script))
    recorder = Recorder()
    batch = Batch(backend, 1, recorder, recorder, speculation=speculation)
    samplers: list[Any] = []
    make = backend.sampler

    def sampler(settings: SamplerSettings, seed: int) -> Any:
        samplers.append(make(settings, seed))
        return samplers[-1]

    backend.sampler = sampler  # type: ignore[method-assign]
    settings = SamplerSettings(0.0, 1.0, 0, 0.0, 1.0, 64, 0.0, 0.0, grammar="fake-json")
    thinking = Thinking("think", budget, opened=False, close=tuple(backend.tokenize("</think>", False)))
    batch.submit(make_request(backend, 1, backend.tokenize("json please", True), settings=settings, thinking=thinking))
    while not batch.idle:
        batch.step()
        assert backend.used_cells() == batch.pool.ledger.used()
    return recorder.outcome(), samplers[0].taken, samplers[0].consumed


def test_reasoning_blocks_budgets_and_grammars_hold_under_speculation() -> None:
    own_block = ["<think>", "Let", " me", " see", " more", ".", "</think>", "Sure, here it is:"]
    cases: list[tuple[list[str], int | None, dict[str, Any]]] = [
        (own_block, None, {}),
        (own_block, 2, {"resume_at": 7}),  # the budget closes the block: the gateway writes </think>
        (["<th", "ink>", "Let me see.", "</think>", "Sure"], None, {"resume_at": 2}),
    ]
    for reply, budget, script in cases:
        plain = reasoning_run(None, reply, budget, **script)
        for wrong_at in (0, 1, 3, None):
            drafter = ScriptedDrafter(reply=len(reply), wrong_at=wrong_at, max_tokens=4)
            spec = Speculation(None, drafter)
            assert reasoning_run(spec, reply, budget, **script) == plain, (reply, budget, wrong_at)
            assert spec.drafted > 0
