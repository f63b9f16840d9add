"""The batch step's image hook: the next image a running sequence has reached, evaluated into its
cells, and where each sequence's text stops for it.

A prompt's images are evaluated one per step, each in a decode of its own before the step's text
rows (llama.cpp keeps only the last decode's logits, and the rows after an image must see it): the
other sequences' rows go on every step, and no step waits for an encoder (the worker's `ImageFeeder`
encodes in the background; an image is evaluated once `ready`). The
sequence is the request's first one while its prompt is prefilled, or any choice recomputing its
cells after they were given away (`replay`: the prompt, then what it had decoded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from gateway.engine.worker.media import ImageFeeder, ImageSpan, span_at, text_until
from gateway.engine.worker.sequences import ChoiceSequence, Job
from gateway.errors import GatewayError, internal_error


class Cells(Protocol):
    def wrote(self, seq: int, n: int) -> None: ...


def due_images(running: Sequence[Job]) -> Iterator[tuple[Job, ChoiceSequence, ImageSpan]]:
    """The images running sequences have reached, oldest request first: the job, the choice whose
    cells take it, the image."""
    for job in running:
        images = job.request.images
        if not images or job.cancelled or not job.choices:
            continue
        for choice in job.choices:
            if choice.replay is not None and (span := span_at(images, choice.pos)) is not None:
                yield job, choice, span
        if job.prefilled < len(job.request.prompt) and (span := span_at(images, job.prefilled)) is not None:
            yield job, job.primary, span


def advance_image(images: ImageFeeder, running: Sequence[Job], cells: Cells) -> tuple[Job, GatewayError] | None:
    """Evaluate the first image due whose embeddings are ready (others may be encoding meanwhile) and
    account for its cells; a request whose image failed (its encoder refused it, or llama.cpp had no
    room) comes back with its error, for the batch to end."""
    due = next(((job, choice, span) for job, choice, span in due_images(running) if images.ready(span)), None)
    if due is None:
        return None
    job, choice, span = due
    try:
        status = images.evaluate(span, choice.seq)
    except Exception as exc:
        return job, internal_error(f"the image at prompt position {span.start} could not be encoded: {exc}")
    if status != 0:
        return job, internal_error(f"llama_decode failed on an image with status {status}")
    cells.wrote(choice.seq, span.n_tokens)
    job.reserve -= span.n_tokens
    if choice.replay is not None:
        choice.pos = span.end
        if choice.pos == len(choice.replay):
            choice.replay = None
    else:
        job.tokens.extend(job.request.prompt[span.start : span.end])
        job.prefilled = span.end
    return None


def text_take(job: Job, pos: int, end: int, budget: int) -> int:
    """How many rows of text from `pos` a step may take: up to `budget`, `end`, or the next image."""
    return max(0, min(budget, text_until(job.request.images, pos, end) - pos))
