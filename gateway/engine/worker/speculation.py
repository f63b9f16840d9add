"""Speculative decoding in the batch loop: which decoding sequences draft, how many tokens, from
what, and how a draft is verified. The batch (`batch.py`) puts a speculating choice's rows
[pending, d1..dk] into its one `llama_decode`, every row with logits, then calls `verify`.

Exactness. `verify` samples the target's own sampler at each row in order, exactly as k+1 plain
steps would (the same sampler chain, grammar, forced tokens, penalties and seeded draws, each row's
logits for log probabilities), and goes on while the token sampled equals the drafted one. The
sampled token is always the one kept, so for a point-mass draft (n-gram or a greedy draft model)
this is rejection sampling: the output's distribution is the target's, and with greedy sampling
the output is token for token what plain decoding gives. A rejected draft token never reaches the
sampler, its grammar or the output: only kept tokens are sampled and accepted; the rejected rows'
cells are removed by the batch (llama_memory_seq_rm), and the KV ledger only ever counts kept ones.

Yielding to batching. On a CPU a decode's cost grows with every row, so a draft row is worth it
only while it is likely accepted and the batch is small: drafts are made only when at most
`MAX_SPECULATING` sequences decode and no prompt is being evaluated; each choice's draft length
doubles after a fully accepted draft and drops to what was accepted plus one otherwise; a choice
whose recent acceptance rate fell under `MIN_RATE` stops drafting and tries again, with one token,
after `PROBE_AFTER` steps. A draft never exceeds what the request reserved in the KV pool (so a
shared pool never fills mid-step), its length limit, its context or the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.engine.worker.ngram import NgramIndex
from gateway.engine.worker.sequences import ChoiceSequence, Job

MAX_SPECULATING = 1  # sequences decoding in a step above which nothing drafts (2 or more: plain steps)
FIRST_LENGTH = 4  # a choice's first draft length; then it doubles or shrinks with acceptance
MIN_RATE = 0.3  # recent acceptance under which a choice stops drafting for a while
PROBE_AFTER = 8  # steps without drafts before a choice under MIN_RATE tries one token again
RATE_WEIGHT = 0.3  # weight of the newest draft in a choice's acceptance rate


class Drafter(Protocol):
    """A draft model (`draft.py`): greedy guesses for what follows a sequence's tokens."""

    max_tokens: int

    def propose(self, seq: int, tokens: Sequence[int], limit: int) -> list[int]: ...

    def forget(self, keep: set[int]) -> None:
        """Drop what it holds for sequences other than `keep`."""


@dataclass
class Drafting:
    """One choice's speculation: its tokens so far (prompt, decoded, pending), their n-gram index,
    its current draft length and recent acceptance rate."""

    tokens: list[int]
    index: NgramIndex | None
    fed: int = 0  # of the choice's history, tokens already in `tokens` (its pending counted as one)
    length: int = FIRST_LENGTH
    rate: float = 1.0
    idle: int = 0  # steps since its last draft while under MIN_RATE

    def catch_up(self, history: list[int], pending: int) -> None:
        """The choice's tokens are now prompt + history + [pending] (history grew by what it decoded)."""
        new = [*history[self.fed :], pending]
        self.fed = len(history) + 1
        self.tokens.extend(new)
        if self.index is not None:
            self.index.extend(new)


class Speculation:
    """A worker's speculation settings (`model.speculative`), its draft model and its counters."""

    def __init__(self, config: dict[str, Any] | None, drafter: Drafter | None = None) -> None:
        ngram = (config or {}).get("ngram")
        self._ngram = (int(ngram["min"]), int(ngram["max"])) if ngram else None
        self._lookahead = int(ngram["lookahead"]) if ngram else 0
        self._drafter = drafter
        self.max_tokens = max(int(ngram["lookahead"]) if ngram else 0, drafter.max_tokens if drafter else 0)
        self.drafted = 0  # tokens drafted since load
        self.accepted = 0  # of those, tokens the target sampled too

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def decoding(self, running: Sequence[Job], n_batch: int, n_ctx: int) -> list[tuple[Job, ChoiceSequence, list[int]]]:
        """The choices that decode a token this step, in batch order, each with its draft ([] if none)."""
        decoding = [
            (job, choice)
            for job in running
            for choice in job.choices
            if choice.pending is not None and not choice.done and choice.replay is None
        ]
        busy = any(job.prefilled < len(job.request.prompt) or job.replaying for job in running)
        drafts = self.plan(decoding, busy, n_batch - len(decoding), n_ctx)
        return [(job, choice, draft) for (job, choice), draft in zip(decoding, drafts, strict=True)]

    def plan(
        self, candidates: Sequence[tuple[Job, ChoiceSequence]], busy: bool, rows: int, n_ctx: int
    ) -> list[list[int]]:
        """The draft of each decoding choice (in order; [] where it does not draft). `busy`: prompts
        or replays share the step; `rows`: batch rows left after one row per decoding choice."""
        if not self.enabled or busy or not 0 < len(candidates) <= MAX_SPECULATING:
            return [[] for _ in candidates]
        if self._drafter is not None:
            self._drafter.forget({choice.seq for _, choice in candidates})
        share = max(1, self.max_tokens // len(candidates))
        reserve = {id(job): job.reserve - sum(1 for j, _ in candidates if j is job) for job, _ in candidates}
        drafts: list[list[int]] = []
        for job, choice in candidates:
            if job.request.images:  # its prompt holds image placeholders, not tokens to draft from
                drafts.append([])
                continue
            state = self._state(job, choice)
            limit = min(
                self._length(state),
                share,
                rows,
                reserve[id(job)],
                choice.output.remaining - 1,  # its last token ends the choice: it is never decoded
                n_ctx - 1 - choice.pos,
            )
            draft = self._draft(state, choice.seq, limit) if limit > 0 else []
            reserve[id(job)] -= len(draft)
            rows -= len(draft)
            drafts.append(draft)
        return drafts

    def record(self, choice: ChoiceSequence, drafted: int, accepted: int) -> None:
        """How `choice`'s draft fared: the counters, its next draft length and its acceptance rate."""
        if not drafted:
            return
        self.drafted += drafted
        self.accepted += accepted
        state: Drafting = choice.drafting
        state.length = min(2 * state.length, self.max_tokens) if accepted == drafted else accepted + 1
        state.rate += RATE_WEIGHT * (accepted / drafted - state.rate)
        state.idle = 0

    def _state(self, job: Job, choice: ChoiceSequence) -> Drafting:
        state: Drafting | None = choice.drafting
        if state is None:
            prompt = job.request.prompt
            index = NgramIndex(*self._ngram) if self._ngram else None
            if index is not None:
                index.extend(prompt)
            state = choice.drafting = Drafting(list(prompt), index)
        state.catch_up(choice.history, choice.pending)  # type: ignore[arg-type]
        return state

    def _length(self, state: Drafting) -> int:
        if state.rate >= MIN_RATE:
            return state.length
        state.idle += 1
        if state.idle < PROBE_AFTER:
            return 0
        state.rate, state.length = MIN_RATE, 1  # one token: a cheap probe whether copying resumed
        return 1

    def _draft(self, state: Drafting, seq: int, limit: int) -> list[int]:
        draft = state.index.draft(min(limit, self._lookahead)) if state.index is not None else []
        if not draft and self._drafter is not None:
            draft = self._drafter.propose(seq, state.tokens, min(limit, self._drafter.max_tokens))
        return draft


Sample = Callable[[Job, ChoiceSequence, int], None]
Commit = Callable[[Job, ChoiceSequence], None]


def verify(job: Job, choice: ChoiceSequence, draft: Sequence[int], row: int, sample: Sample, commit: Commit) -> int:
    """After a decode whose rows `row`, `row + 1`, ... held the choice's pending token and `draft`
    (its pending token already committed): sample at each row in order while the sampled token is
    the drafted one, committing each such token (its cell is kept). Returns the tokens accepted; the
    last sampled token is the choice's pending one (or ended it), as after a plain step."""
    sample(job, choice, row)
    for i, token in enumerate(draft):
        if job.cancelled or choice.done or choice.pending != token:
            return i
        commit(job, choice)
        sample(job, choice, row + 1 + i)
    return len(draft)
