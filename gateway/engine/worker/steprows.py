"""The rows of one batch step, and what their decode did to each sequence.

`plan` fills `n_batch` in order of urgency: one row per decoding sequence (and a speculating one's
drafted tokens, all with logits), then the cells paused requests must recompute (`replay`, no logits),
then chunks of admitted prompts; text rows stop at an image (`imagestep.py` evaluates it). After the
decode, `replayed` and `prefilled` account for the rows that wrote cells without sampling; the
decoding sequences are sampled (and their drafts verified) by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.engine.worker.backend import Row
from gateway.engine.worker.imagestep import text_take
from gateway.engine.worker.pool import SequencePool
from gateway.engine.worker.sequences import ChoiceSequence, Job
from gateway.engine.worker.speculation import Speculation


@dataclass
class StepRows:
    rows: list[Row] = field(default_factory=list)
    decoding: list[tuple[Job, ChoiceSequence, int, list[int]]] = field(default_factory=list)  # its row, its draft
    replaying: list[tuple[Job, ChoiceSequence, int]] = field(default_factory=list)  # rows it recomputes
    prefilling: list[tuple[Job, int, int]] = field(default_factory=list)  # prompt tokens, the row of its last

    def replayed(self, pool: SequencePool) -> None:
        for job, choice, take in self.replaying:
            pool.wrote(choice.seq, take)
            job.reserve -= take
            choice.pos += take
            if choice.replay is not None and choice.pos == len(choice.replay):
                choice.replay = None  # its cells are back: it decodes its pending token next

    def prefilled(self, pool: SequencePool) -> list[tuple[Job, int]]:
        """The prompt chunks are in; the requests whose whole prompt now is, with its last row."""
        complete: list[tuple[Job, int]] = []
        for job, take, last_row in self.prefilling:
            pool.wrote(job.primary.seq, take)
            job.tokens.extend(job.request.prompt[job.prefilled : job.prefilled + take])
            job.prefilled += take
            job.reserve -= take
            if job.prefilled == len(job.request.prompt):
                complete.append((job, last_row))
        return complete


def plan(running: list[Job], speculation: Speculation, n_batch: int, n_ctx: int) -> StepRows:
    step = StepRows()
    rows = step.rows
    for job, choice, draft in speculation.decoding(running, n_batch, n_ctx):
        step.decoding.append((job, choice, len(rows), draft))
        rows.append(Row(choice.pending, choice.pos, choice.seq, True))  # type: ignore[arg-type]
        rows.extend(Row(token, choice.pos + 1 + i, choice.seq, True) for i, token in enumerate(draft))
    budget = n_batch - len(rows)
    for job in running:
        for choice in job.choices:
            if choice.replay is None or budget <= 0:
                continue
            take = text_take(job, choice.pos, len(choice.replay), budget)
            if take == 0:
                continue  # at an image: the next step's
            rows.extend(Row(choice.replay[p], p, choice.seq, False) for p in range(choice.pos, choice.pos + take))
            step.replaying.append((job, choice, take))
            budget -= take
    for job in running:
        prompt = job.request.prompt
        if job.prefilled >= len(prompt) or budget <= 0:
            continue
        take = text_take(job, job.prefilled, len(prompt), budget)
        if take == 0:
            continue
        seq, last = job.primary.seq, len(prompt) - 1
        rows.extend(Row(prompt[p], p, seq, p == last) for p in range(job.prefilled, job.prefilled + take))
        step.prefilling.append((job, take, len(rows) - 1))
        budget -= take
    return step
