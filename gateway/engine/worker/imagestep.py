"""The batch step's image hook: which image a running sequence has reached, and where its text stops.

A prompt's images are evaluated one per step, each in a decode of its own before the step's text
rows (llama.cpp keeps only the last decode's logits, and the rows after an image must see it): the
other sequences' rows go on every step, and no step waits for more than one image's encoder. The
sequence is the request's first one while its prompt is prefilled, or any choice recomputing its
cells after they were given away (`replay`: the prompt, then what it had decoded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.engine.worker.media import ImageSpan, span_at, text_until
from gateway.engine.worker.sequences import ChoiceSequence, Job


@dataclass(frozen=True)
class DueImage:
    job: Job
    choice: ChoiceSequence  # whose cells take it
    span: ImageSpan


def next_image(running: Sequence[Job]) -> DueImage | None:
    """The first image a running sequence has reached, oldest request first."""
    for job in running:
        images = job.request.images
        if not images or job.cancelled or not job.choices:
            continue
        for choice in job.choices:
            if choice.replay is not None and (span := span_at(images, choice.pos)) is not None:
                return DueImage(job, choice, span)
        if job.prefilled < len(job.request.prompt) and (span := span_at(images, job.prefilled)) is not None:
            return DueImage(job, job.primary, span)
    return None


def text_take(job: Job, pos: int, end: int, budget: int) -> int:
    """How many rows of text from `pos` a step may take: up to `budget`, `end`, or the next image."""
    return max(0, min(budget, text_until(job.request.images, pos, end) - pos))
