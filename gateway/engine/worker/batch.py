"""Continuous batching: every running sequence of every request advances in one decode per step.

Each step (`Batch.step`):
1. admit waiting requests, oldest first, while a slot, sequence ids and KV room are free: a request
   reserves the cells it may ever write (prompt beyond a reused prefix + n x its token limit), so a
   shared pool never fills mid-generation; cached prefixes are evicted, least recently used first,
   to make room;
2. build one batch (`steprows.py`): one row per decoding sequence first, then prompt chunks of
   admitted requests in what is left of `n_batch` (a long prompt shares steps with the streams
   instead of freezing them);
3. decode, then sample each sequence with its own sampler and feed its output (a speculating one
   also had its drafted tokens in the batch: `speculation.py` verifies them row by row);
4. retire what finished, was stopped or cancelled at once: its cells are released (a request's first
   sequence stays cached for prefix reuse, reclaimable whenever room is needed).

A request can be paused (preempted for a more urgent one): `preemption.py` sets it aside and
readmits it, recomputing its cells (`replay` rows, no logits) where they were given away.

With a prefix store (`saved.py`), a request whose prompt begins with a stored prefix longer than what
the pool offers gets it loaded into a cached sequence first (`SequencePool.restore_prefix`), then
reuses it as any cached prefix; a seeded request never does (it evaluates its whole prompt).

n > 1 choices are n sequences: the prompt is evaluated once, then copied (llama_memory_seq_cp, no
cells) to the other choices, which sample from the same logits with seed + i.

`Batch` is the requests' state machine: admission, the step and retirement. The sequence ids, cells
and cached prefixes they share are `pool.py`'s; each choice's own state is `sequences.py`'s and
`output.py`'s.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from gateway.engine.base import ChoiceFinished, Delta, Finished
from gateway.engine.worker import steprows
from gateway.engine.worker.backend import Backend
from gateway.engine.worker.guard import sampler_seed
from gateway.engine.worker.imagestep import advance_image
from gateway.engine.worker.media import ImageFeeder, text_tokens
from gateway.engine.worker.output import ChoiceOutput
from gateway.engine.worker.pool import SequencePool
from gateway.engine.worker.preemption import Preemption
from gateway.engine.worker.saved import Cached, SavedPrefixes
from gateway.engine.worker.sequences import ChoiceSequence, Job, Request
from gateway.engine.worker.speculation import Speculation, verify
from gateway.errors import GatewayError, internal_error

EventSink = Callable[[int, Delta | ChoiceFinished | Finished], None]
ErrorSink = Callable[[int, GatewayError], None]


class Batch:
    def __init__(
        self,
        backend: Backend,
        slots: int,
        on_event: EventSink,
        on_error: ErrorSink,
        images: ImageFeeder | None = None,
        speculation: Speculation | None = None,
        saved: SavedPrefixes | None = None,
    ) -> None:
        self._backend = backend
        self.images = images  # evaluates the images prompts reach (imagestep.py); None: no projector
        self.speculation = speculation or Speculation(None)  # drafts verified in the step (speculation.py)
        self.slots = slots
        self._on_event = on_event
        self._on_error = on_error
        self.pool = SequencePool(backend, cached_max=slots, saved=saved)
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.preemption = Preemption(self.pool, self.running, self.waiting, slots, self._finish)
        self.steps = 0
        self.reused_tokens = 0  # prompt tokens whose cells came from another sequence

    # -- the outside world ----------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        self.waiting.append(Job(request))

    def cancel(self, request_id: int) -> None:
        self.preemption.cancel(request_id)
        for job in [*self.waiting, *self.running, *self.preemption.resumed]:
            if job.request.request_id == request_id:
                job.cancelled = True

    def pause(self, request_id: int) -> None:
        self.preemption.pause(request_id)

    def resume(self, request_id: int) -> None:
        self.preemption.resume(request_id)

    @property
    def paused(self) -> dict[int, Job]:
        return self.preemption.paused

    @property
    def replayed_tokens(self) -> int:
        return self.preemption.replayed_tokens

    @property
    def saved(self) -> SavedPrefixes | None:
        return self.pool.saved

    def cached(self) -> list[Cached]:
        """What an unload may keep on disk (saved.py)."""
        return self.pool.saveable(self.running)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running and not self.preemption.resumed

    def committed(self) -> int:
        """Cells in use (cached prefixes included) plus what running requests may still write."""
        return self.pool.committed(self.running)

    def kv_committed(self) -> int:
        """Cells running requests hold or may still write: cached prefixes are reclaimable."""
        seqs = {choice.seq for job in self.running for choice in job.choices}
        return self.pool.ledger.used(seqs) + sum(job.reserve for job in self.running)

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> None:
        self._retire()
        self._admit()
        self._image()
        step = steprows.plan(self.running, self.speculation, self._backend.n_batch, self._backend.n_ctx)
        if not step.rows:
            if self.images is not None:
                self.images.wait(0.05)  # only images being encoded: wait for one rather than spin
            return
        status = self._backend.decode(step.rows)
        self.steps += 1
        if status != 0:
            self._decode_failed(status)
            return
        for job, choice, row, draft in step.decoding:
            self._decoded(job, choice)
            accepted = verify(job, choice, draft, row, self._sample, self._decoded)
            if accepted < len(draft) and not choice.released:
                self.pool.drop_unwritten(choice.seq, choice.pos)  # the rejected tokens' cells
            self.speculation.record(choice, len(draft), accepted)
        step.replayed(self.pool)
        for job, last_row in step.prefilled(self.pool):
            self._first_tokens(job, last_row)
        self._retire()

    def _decoded(self, job: Job, choice: ChoiceSequence) -> None:
        """The choice's pending token is in its cells."""
        self.pool.wrote(choice.seq, 1)
        job.reserve -= 1
        if choice is job.primary:
            job.tokens.append(choice.pending)  # type: ignore[arg-type]
        choice.history.append(choice.pending)  # type: ignore[arg-type]
        choice.pos += 1

    def _image(self) -> None:
        """The next image a prompt has reached, in a decode of its own (imagestep.py)."""
        failed = advance_image(self.images, self.running, self.pool) if self.images is not None else None
        if failed is not None:
            self.running.remove(failed[0])
            self._fail(*failed)

    def _first_tokens(self, job: Job, row: int) -> None:
        """The prompt is in: copy it to the other choices, and every choice samples its first token."""
        length = len(job.request.prompt)
        for choice in job.choices:
            if choice is not job.primary:
                self.pool.copy_prefix(job.primary.seq, choice.seq, length)
            choice.pos = length
        for choice in job.choices:
            self._sample(job, choice, row)

    def _sample(self, job: Job, choice: ChoiceSequence, row: int) -> None:
        """The choice's next token. A sequence whose sampler or grammar fails ends its own request
        in-band (it is retired with the finished ones), never the worker and the streams beside it."""
        if job.cancelled:
            return
        try:
            output = choice.output
            forced = output.forced()
            token = choice.sampler.sample(row, output.thinking, output.opens()) if forced is None else forced
            self._take(job, choice, token, row)
        except Exception as exc:
            self._on_error(job.request.request_id, internal_error(f"sampling failed: {exc!r}"))
            job.cancelled = True

    def _take(self, job: Job, choice: ChoiceSequence, token: int, row: int) -> None:
        if choice.output.token(token, row):
            self._end_choice(job, choice)
        else:
            choice.pending = token

    def _end_choice(self, job: Job, choice: ChoiceSequence) -> None:
        choice.done = True
        choice.pending = None
        choice.output.close(cancelled=False)
        if job.request.n > 1:
            self._on_event(
                job.request.request_id,
                ChoiceFinished(
                    choice.index,
                    choice.output.finish_reason,
                    choice.output.produced,
                    choice.output.stop_sequence,
                    choice.output.reasoning_tokens,
                ),
            )
            if choice is not job.primary:
                choice.released = True
                self.pool.release(choice.seq)  # its own cells are free at once; the prompt stays shared

    # -- admission and retirement ---------------------------------------------------------------

    def _admit(self) -> None:
        if not self.preemption.readmit():
            return  # resumed requests go first; later ones wait behind them
        while self.waiting and len(self.running) < self.slots:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                self._finish(job)
                continue
            try:
                placed = self._place(job)
            except Exception as exc:  # a request llama.cpp refuses fails alone; the others' streams go on
                self.waiting.popleft()
                self._fail(job, internal_error(f"could not start the request: {exc!r}"))
                continue
            if not placed:
                return  # first come, first served: later requests wait behind it
            self.waiting.popleft()
            self.running.append(job)

    def _place(self, job: Job) -> bool:
        request = job.request
        # A seeded request evaluates its whole prompt, so that its output depends on its seed, prompt
        # and settings only, never on which batches earlier requests split the prompt into.
        source, reused = (None, 0) if request.seed is not None else self.pool.best_prefix(request.prompt, self.running)
        if request.seed is None:
            source, reused = self.pool.restore_prefix(request, source, reused, self.running)
        if request.seed is not None and not self.running:
            # On an idle worker it also starts from an empty pool, as a freshly loaded worker does: its
            # cells, and llama.cpp's float sums over them, then do not depend on what ran before.
            self.pool.clear_cache()
        cache = self.pool.cache
        while True:
            reused = min(reused, len(request.prompt) - 1)
            need = len(request.prompt) - reused + request.n * request.limit
            if self.committed() + need <= self.pool.cells and self.pool.free_ids >= request.n:
                break
            if self.pool.evict_oldest(keep=source):
                continue
            if source is not None and source in cache:
                self.pool.evict(source)  # the prefix it would reuse is the last room there is
                source, reused = None, 0
                continue
            if not self.preemption.drop_latest(keep=None):  # a paused request's room: recomputed later
                return False
        seqs = [self.pool.take() for _ in range(request.n)]
        seed = sampler_seed(request.seed) if request.seed is not None else random.randrange(2**31)
        for index, seq in enumerate(seqs):
            try:
                sampler = self._backend.sampler(request.settings, sampler_seed(seed + index))
                sampler.accept_prompt(text_tokens(request.prompt) if request.images else request.prompt)
            except Exception:
                self.pool.give_back(seqs[index:])  # the choices made so far free theirs with the job
                raise
            output = ChoiceOutput(
                self._backend, self._emitter(request.request_id, index), request.stops, request.limit,
                request.delta_interval, request.top_logprobs, request.thinking,
            )  # fmt: skip
            job.choices.append(ChoiceSequence(index, seq, sampler, output))
        if source is not None and reused > 0:
            self.pool.copy_prefix(source, seqs[0], reused)
        job.prefilled = job.cached = reused
        self.reused_tokens += reused
        job.tokens = list(request.prompt[:reused])
        job.reserve = need
        return True

    def _retire(self) -> None:
        for job in [j for j in self.running if j.finished]:
            self.running.remove(job)
            self._finish(job)

    def _finish(self, job: Job) -> None:
        request = job.request
        for choice in job.choices:
            if not choice.done:
                choice.output.close(cancelled=True)
                if request.n > 1 and not job.cancelled:
                    self._on_event(
                        request.request_id, ChoiceFinished(choice.index, "cancelled", choice.output.produced)
                    )
        produced = sum(c.output.produced for c in job.choices)
        stop_sequence = None
        if job.cancelled:
            reason = "cancelled"
        elif request.n == 1:
            reason, stop_sequence = job.primary.output.finish_reason, job.primary.output.stop_sequence
        else:
            reason = "stop"
        thought = sum(c.output.reasoning_tokens for c in job.choices)
        finished = Finished(reason, len(request.prompt), produced, stop_sequence, thought, job.cached)
        self._on_event(request.request_id, finished)
        self._free_job(job)

    def _free_job(self, job: Job) -> None:
        for choice in job.choices:
            if choice is not job.primary and not choice.released:
                choice.released = True
                self.pool.release(choice.seq)
        if job.choices and not job.dropped:
            primary = job.primary.seq
            length = self.pool.ledger.length(primary)
            if length > 0 and not job.cancelled:
                self.pool.keep(primary, job.tokens[:length])
            else:
                self.pool.release(primary)

    def _decode_failed(self, status: int) -> None:
        """llama.cpp refused the step (no KV room, or an error): the newest request fails in-band,
        the others go on next step."""
        self._fail(self.running.pop(), internal_error(f"llama_decode failed with status {status}"))

    def _fail(self, job: Job, error: GatewayError) -> None:
        self._on_error(job.request.request_id, error)
        job.cancelled = True
        for choice in job.choices:
            choice.output.close(cancelled=True)
        self._free_job(job)

    def _emitter(self, request_id: int, index: int) -> Callable[[str, list[dict[str, object]] | None], None]:
        def emit(text: str, entries: list[dict[str, object]] | None) -> None:
            self._on_event(request_id, Delta(text, entries, index))

        return emit
