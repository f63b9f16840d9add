"""One choice's output: sampled tokens become deltas. Runs in the worker process."""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.engine.reasoning import Splitter, splitter
from gateway.engine.worker.backend import Backend
from gateway.engine.worker.deltas import DeltaBatcher
from gateway.engine.worker.sampling import LogprobScorer
from gateway.engine.worker.stops import StopMatcher

if TYPE_CHECKING:
    from gateway.engine.worker.sequences import Thinking

Emit = Callable[[str, list[dict[str, Any]] | None], None]


class ChoiceOutput:
    """Turns one sequence's tokens into deltas: end-of-generation tokens, stop sequences, UTF-8
    pieces split across tokens, coalescing, log probabilities, and the length limit."""

    def __init__(
        self,
        backend: Backend,
        emit: Emit,
        stops: list[str],
        limit: int,
        delta_interval: float,
        top_logprobs: int | None,
        thinking: Thinking | None = None,
    ) -> None:
        self._backend = backend
        self._matcher = StopMatcher(stops)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._batcher = DeltaBatcher(emit, delta_interval)
        self._scorer = LogprobScorer(backend, top_logprobs) if top_logprobs is not None else None
        self._limit = limit
        self.produced = 0
        self.finish_reason = "length"
        self.stop_sequence: str | None = None  # the stop string that ended this choice, if one did
        # A reasoning model's thinking, followed to count its tokens and close it when its budget is spent.
        self._thinking = thinking
        self._splitter = splitter(thinking.format) if thinking is not None else None
        self._forced: deque[int] = deque()
        self._closed = False
        self._opened_itself = False  # the model began its block under a constraint (see `opens`)
        self.reasoning_tokens = 0
        if thinking is not None and thinking.opened and self._splitter is not None:
            # The prompt opened the block: the text says so too, for the gateway's own splitter.
            self._splitter.feed(self._splitter.fmt.start)
            self._batcher.add(self._splitter.fmt.start)

    @property
    def thinking(self) -> bool:
        """Before the answer of a reasoning model (its thinking; gpt-oss's headers): a constraint
        applies to the answer only."""
        return self._splitter is not None and self._splitter.free

    @property
    def remaining(self) -> int:
        """Tokens this choice may still produce before its length limit."""
        return self._limit - self.produced

    def opens(self) -> Callable[[int], bool] | None:
        """Before a constrained answer, where the prompt left the model outside its thinking: what
        tells the sampler that a token the grammar refuses begins the block (the sampler then takes
        it freely, and the grammar waits for the answer after the end marker), else None."""
        split = self._splitter
        if not isinstance(split, Splitter) or split.state != "start" or self._opened_itself:
            return None
        return self._begins_block

    def _begins_block(self, token: int) -> bool:
        """Asked only of a token the sampler takes if True. A token holding part of the marker
        commits the choice to the block: the gateway writes the rest of the marker itself."""
        split = self._splitter
        assert isinstance(split, Splitter)
        rest = split.opening(self._backend.piece(token).decode("utf-8", errors="replace"))
        if rest is None:
            return False
        self._opened_itself = True
        if rest:
            marker = self._backend.tokenize(split.fmt.start, False)
            self._forced.extend(marker[1:] if marker[0] == token else self._backend.tokenize(rest, False))
        return True

    def forced(self) -> int | None:
        """The next token the gateway writes itself instead of sampling: the rest of a start marker
        the model began under a constraint, or the end of the thinking once its budget is spent."""
        thinking, split = self._thinking, self._splitter
        spent = thinking is not None and thinking.budget is not None and self.reasoning_tokens >= thinking.budget
        if spent and not self._forced and not self._closed and split is not None and split.thinking:
            self._closed = True
            self._forced.extend(thinking.close)  # type: ignore[union-attr]
        return self._forced.popleft() if self._forced else None

    def token(self, token: int, row: int) -> bool:
        """Take one sampled token (its logits at batch row `row`); True when this choice is finished."""
        if self._backend.is_eog(token):
            self.finish_reason = "stop"
            return True
        self.produced += 1
        piece = self._backend.piece(token)
        decoded = self._decoder.decode(piece)
        thought = False
        if self._splitter is not None:
            before = self._splitter.thinking
            self._splitter.feed(decoded)
            thought = before or self._splitter.thinking or self._splitter.overhead
            self.reasoning_tokens += thought
        text, hit_stop = self._matcher.feed(decoded)
        # Log probabilities describe the answer's tokens (OpenAI's `logprobs.content`), not the thinking's.
        scored = self._scorer is not None and not thought
        self._batcher.add(text, [self._scorer.entry(token, piece, row)] if scored and self._scorer else None)
        if hit_stop:
            self.finish_reason, self.stop_sequence = "stop", self._matcher.matched
            return True
        return self.produced >= self._limit

    def close(self, cancelled: bool) -> None:
        if cancelled:
            self.finish_reason = "cancelled"
            return
        if self.stop_sequence is None:
            # Text held back as a possible stop-sequence start turned out not to be one.
            self._batcher.add(self._matcher.feed(self._decoder.decode(b"", final=True))[0] + self._matcher.flush())
        self._batcher.flush()
