"""A request in the worker's batch: what was validated, and each choice's sequence as it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.engine.worker.backend import Sampler, SamplerSettings
from gateway.engine.worker.media import ImageSpan
from gateway.engine.worker.output import ChoiceOutput


@dataclass(frozen=True)
class Thinking:
    """A reasoning model's request: its format, the thinking budget, whether the prompt left the
    model inside the block, and the tokens that close it when the budget is spent."""

    format: str
    budget: int | None
    opened: bool
    close: tuple[int, ...]


def answer_reserve(limit: int) -> int:
    """Of a choice's `limit` tokens, what thinking with no budget of its own (none asked, none in
    models.yaml) leaves to the answer: a quarter, at least 16, at most half. When the rest is spent
    the block is closed (its end marker is written from the reserve), so that `max_tokens` does not
    end a request that has said nothing."""
    return min(max(16, limit // 4), limit // 2)


@dataclass(frozen=True)
class Request:
    """A validated request: tokens that fit, and how to sample and end each choice."""

    request_id: int
    prompt: list[int]
    n: int
    limit: int  # completion tokens per choice
    settings: SamplerSettings
    seed: int | None
    stops: list[str]
    delta_interval: float
    top_logprobs: int | None  # None: no log probabilities
    thinking: Thinking | None = None
    images: tuple[ImageSpan, ...] = ()  # where the prompt's images are: placeholders in `prompt` (media.py)


@dataclass
class ChoiceSequence:
    index: int
    seq: int
    sampler: Sampler
    output: ChoiceOutput
    pos: int = 0  # the next position this sequence writes
    pending: int | None = None  # sampled, to be decoded next step
    done: bool = False
    released: bool = False  # its sequence id went back to the pool
    history: list[int] = field(default_factory=list)  # tokens it decoded after the prompt (replayed after a drop)
    replay: list[int] | None = None  # after a drop: the tokens its cells must hold again before it goes on
    drafting: Any = None  # speculation.py's state for this choice, when its model speculates


@dataclass
class Job:
    request: Request
    choices: list[ChoiceSequence] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the first sequence's cells
    reserve: int = 0  # cells it may still write
    tokens: list[int] = field(default_factory=list)  # what the first sequence's cells hold
    cancelled: bool = False
    dropped: bool = False  # paused, and its cells were given to others: recomputed when it resumes
    cached: int = 0  # prompt tokens whose cells were reused when it was placed

    @property
    def primary(self) -> ChoiceSequence:
        return self.choices[0]

    @property
    def replaying(self) -> bool:
        """A choice is recomputing its dropped cells."""
        return any(choice.replay is not None for choice in self.choices)

    @property
    def finished(self) -> bool:
        return self.cancelled or (bool(self.choices) and all(c.done for c in self.choices))
