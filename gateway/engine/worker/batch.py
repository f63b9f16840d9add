"""Continuous batching: every running sequence of every request advances in one decode per step.

Each step (`Batch.step`):
1. admit waiting requests, oldest first, while a slot, sequence ids and KV room are free: a request
   reserves the cells it may ever write (prompt beyond a reused prefix + n x its token limit), so a
   shared pool never fills mid-generation; cached prefixes are evicted, least recently used first,
   to make room;
2. build one batch: one row per decoding sequence first, then prompt chunks of admitted requests in
   what is left of `n_batch` (a long prompt shares steps with the streams instead of freezing them);
3. decode, then sample each sequence with its own sampler and feed its output;
4. retire what finished, was stopped or cancelled at once: its cells are released (a request's first
   sequence stays cached for prefix reuse, reclaimable whenever room is needed).

A request can be paused (preempted for a more urgent one, `pause`/`resume`): it is set aside with its
samplers, grammar and output as they are, and its cells stay while room allows; when an admission
needs them they are dropped, and on resume each choice's cells are recomputed from the prompt and
the tokens it had decoded (`replay` rows, no logits) before it decodes its pending token, so its
answer is the one it would have been.

n > 1 choices are n sequences: the prompt is evaluated once, then copied (llama_memory_seq_cp, no
cells) to the other choices, which sample from the same logits with seed + i.

`Batch` is one state machine over one set of sequence ids, one KV ledger and one prefix cache:
admission, the step and retirement each read and write all of them (admitting evicts cached
prefixes, retiring caches them, a failed decode frees a request mid-step). The parts with state of
their own are `kv.py`, `sequences.py` and `output.py`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from gateway.engine.base import ChoiceFinished, Delta, Finished
from gateway.engine.worker.backend import Backend, Row
from gateway.engine.worker.guard import sampler_seed
from gateway.engine.worker.kv import KvLedger, PrefixCache
from gateway.engine.worker.output import ChoiceOutput
from gateway.engine.worker.sequences import ChoiceSequence, Job, Request
from gateway.errors import GatewayError, internal_error

EventSink = Callable[[int, Delta | ChoiceFinished | Finished], None]
ErrorSink = Callable[[int, GatewayError], None]


class Batch:
    def __init__(self, backend: Backend, slots: int, on_event: EventSink, on_error: ErrorSink) -> None:
        self._backend = backend
        self.slots = slots
        self._on_event = on_event
        self._on_error = on_error
        self.ledger = KvLedger(backend.kv_cells)
        self.cache = PrefixCache()
        self._free = list(range(backend.max_sequences))
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.paused: dict[int, Job] = {}  # set aside until resumed, in pause order
        self._resumed: deque[Job] = deque()  # resumed, to be readmitted before any waiting request
        self.steps = 0
        self.reused_tokens = 0  # prompt tokens whose cells came from another sequence
        self.replayed_tokens = 0  # tokens evaluated again for paused requests whose cells were dropped

    # -- the outside world ----------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        self.waiting.append(Job(request))

    def cancel(self, request_id: int) -> None:
        paused = self.paused.pop(request_id, None)
        if paused is not None:
            self._resumed.append(paused)  # ended by the next step, as a waiting request is
        for job in [*self.waiting, *self.running, *self._resumed]:
            if job.request.request_id == request_id:
                job.cancelled = True

    def pause(self, request_id: int) -> None:
        """Set a request aside: it takes no step until resumed (unknown or finished: nothing)."""
        for queue in (self.waiting, self.running, self._resumed):
            for job in queue:
                if job.request.request_id == request_id and not job.finished:
                    queue.remove(job)
                    self.paused[request_id] = job
                    return

    def resume(self, request_id: int) -> None:
        job = self.paused.pop(request_id, None)
        if job is not None:
            self._resumed.append(job)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running and not self._resumed

    def committed(self) -> int:
        """Cells in use (cached prefixes included) plus what running requests may still write."""
        return self.ledger.used() + sum(job.reserve for job in self.running)

    def kv_committed(self) -> int:
        """Cells running requests hold or may still write: cached prefixes are reclaimable."""
        seqs = {choice.seq for job in self.running for choice in job.choices}
        return self.ledger.used(seqs) + sum(job.reserve for job in self.running)

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> None:
        self._retire()
        self._admit()
        rows: list[Row] = []
        decoding: list[tuple[Job, ChoiceSequence, int]] = []
        for job in self.running:
            for choice in job.choices:
                if choice.pending is not None and not choice.done and choice.replay is None:
                    decoding.append((job, choice, len(rows)))
                    rows.append(Row(choice.pending, choice.pos, choice.seq, True))
        budget = self._backend.n_batch - len(rows)
        replaying: list[tuple[Job, ChoiceSequence, int]] = []
        for job in self.running:
            for choice in job.choices:
                if choice.replay is None or budget <= 0:
                    continue
                take = min(budget, len(choice.replay) - choice.pos)
                rows.extend(Row(choice.replay[p], p, choice.seq, False) for p in range(choice.pos, choice.pos + take))
                replaying.append((job, choice, take))
                budget -= take
        prefilling: list[tuple[Job, int, int]] = []  # job, prompt tokens, row of its last
        for job in self.running:
            prompt = job.request.prompt
            if job.prefilled >= len(prompt) or budget <= 0:
                continue
            take = min(budget, len(prompt) - job.prefilled)
            seq = job.primary.seq
            for pos in range(job.prefilled, job.prefilled + take):
                rows.append(Row(prompt[pos], pos, seq, pos == len(prompt) - 1))
            prefilling.append((job, take, len(rows) - 1))
            budget -= take
        if not rows:
            return
        status = self._backend.decode(rows)
        self.steps += 1
        if status != 0:
            self._decode_failed(status)
            return
        for job, choice, row in decoding:
            self.ledger.extend(choice.seq, 1)
            job.reserve -= 1
            if choice is job.primary:
                job.tokens.append(choice.pending)  # type: ignore[arg-type]
            choice.history.append(choice.pending)  # type: ignore[arg-type]
            choice.pos += 1
            self._sample(job, choice, row)
        for job, choice, take in replaying:
            self.ledger.extend(choice.seq, take)
            job.reserve -= take
            choice.pos += take
            if choice.replay is not None and choice.pos == len(choice.replay):
                choice.replay = None  # its cells are back: it decodes its pending token next
        for job, take, last_row in prefilling:
            self.ledger.extend(job.primary.seq, take)
            job.tokens.extend(job.request.prompt[job.prefilled : job.prefilled + take])
            job.prefilled += take
            job.reserve -= take
            if job.prefilled == len(job.request.prompt):
                self._first_tokens(job, last_row)
        self._retire()

    def _first_tokens(self, job: Job, row: int) -> None:
        """The prompt is in: copy it to the other choices, and every choice samples its first token."""
        length = len(job.request.prompt)
        for choice in job.choices:
            if choice is not job.primary:
                self._backend.seq_cp(job.primary.seq, choice.seq, 0, length)
                self.ledger.share(job.primary.seq, choice.seq, length)
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
                self._release(choice.seq)  # its own cells are free at once; the prompt stays shared

    # -- admission and retirement ---------------------------------------------------------------

    def _admit(self) -> None:
        if not self._readmit():
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
        source, reused = (None, 0) if request.seed is not None else self._best_prefix(request.prompt)
        if request.seed is not None and not self.running:
            # On an idle worker it also starts from an empty pool, as a freshly loaded worker does: its
            # cells, and llama.cpp's float sums over them, then do not depend on what ran before.
            while (cached := self.cache.oldest()) is not None:
                self._evict(cached)
        while True:
            reused = min(reused, len(request.prompt) - 1)
            need = len(request.prompt) - reused + request.n * request.limit
            if self.committed() + need <= self.ledger.cells and len(self._free) >= request.n:
                break
            victim = self.cache.oldest(keep=source)
            if victim is None and source is not None and source in self.cache:
                victim, source, reused = source, None, 0
            if victim is None:
                if self._drop_paused(keep=None):  # room held by a paused request: it recomputes it later
                    continue
                return False
            self._evict(victim)
        self._free.sort()  # dense ids: llama.cpp splits a batch whose sequence ids are scattered
        seqs = [self._free.pop(0) for _ in range(request.n)]
        seed = sampler_seed(request.seed) if request.seed is not None else random.randrange(2**31)
        for index, seq in enumerate(seqs):
            try:
                sampler = self._backend.sampler(request.settings, sampler_seed(seed + index))
                sampler.accept_prompt(request.prompt)
            except Exception:
                self._free.extend(seqs[index:])  # the choices made so far free theirs with the job
                raise
            output = ChoiceOutput(
                self._backend, self._emitter(request.request_id, index), request.stops, request.limit,
                request.delta_interval, request.top_logprobs, request.thinking,
            )  # fmt: skip
            job.choices.append(ChoiceSequence(index, seq, sampler, output))
        if source is not None and reused > 0:
            self._backend.seq_cp(source, seqs[0], 0, reused)
            self.ledger.share(source, seqs[0], reused)
            if source in self.cache:
                self.cache.touch(source)
        job.prefilled = reused
        self.reused_tokens += reused
        job.tokens = list(request.prompt[:reused])
        job.reserve = need
        return True

    # -- paused requests ------------------------------------------------------------------------

    def _readmit(self) -> bool:
        """Resumed requests back into the batch, in order; False while one waits for a slot or room."""
        while self._resumed:
            job = self._resumed[0]
            if job.finished:
                self._resumed.popleft()
                self._finish(job)
                continue
            if not job.choices:  # paused before it was placed: it is placed as a new request
                self._resumed.popleft()
                self.waiting.appendleft(job)
                continue
            if len(self.running) >= self.slots:
                return False
            if job.dropped and job.prefilled < len(job.request.prompt):
                self._resumed.popleft()  # nothing was sampled yet: start it over, as if new
                job.choices, job.prefilled, job.reserve, job.tokens, job.dropped = [], 0, 0, [], False
                self.waiting.appendleft(job)
                continue
            replays = self._replays(job) if job.dropped else {}
            need = job.reserve + sum(len(tokens) for tokens in replays.values())
            if not self._room(need, len(replays), job):
                return False
            self._resumed.popleft()
            for choice in job.choices:
                if choice.index in replays:
                    self._free.sort()
                    choice.seq, choice.released = self._free.pop(0), False
                    choice.replay, choice.pos = replays[choice.index], 0
            if job.dropped:
                self.replayed_tokens += sum(len(tokens) for tokens in replays.values())
                job.tokens = list(replays[0])
                job.reserve, job.dropped = need, False
            self.running.append(job)
        return True

    def _replays(self, job: Job) -> dict[int, list[int]]:
        """Per choice whose cells were dropped and that still needs them (the first always: it keeps
        the prompt for reuse), the tokens to evaluate again."""
        prompt = job.request.prompt
        return {c.index: [*prompt, *c.history] for c in job.choices if c is job.primary or not c.done}

    def _room(self, need: int, sequences: int, job: Job) -> bool:
        """Cached prefixes evicted, then other paused requests' cells dropped, until `need` more cells
        and `sequences` ids fit."""
        while self.committed() + need > self.ledger.cells or len(self._free) < sequences:
            victim = self.cache.oldest()
            if victim is not None:
                self._evict(victim)
            elif not self._drop_paused(keep=job):
                return False
        return True

    def _drop_paused(self, keep: Job | None) -> bool:
        """Free the cells of the latest paused request that still holds some; False if none does."""
        for job in reversed([*self.paused.values(), *self._resumed]):
            if job is not keep and job.choices and not job.dropped:
                for choice in job.choices:
                    if not choice.released:
                        choice.released = True
                        self._release(choice.seq)
                job.dropped = True
                return True
        return False

    def _best_prefix(self, prompt: list[int]) -> tuple[int | None, int]:
        """The cached or running sequence sharing the longest prefix with `prompt`."""
        source, reused = self.cache.best(prompt)
        for job in self.running:
            n = 0
            for a, b in zip(job.tokens, prompt, strict=False):
                if a != b:
                    break
                n += 1
            if n > reused:
                source, reused = job.primary.seq, n
        return source, reused

    def _evict(self, seq: int) -> None:
        self.cache.remove(seq)
        self._release(seq)

    def _release(self, seq: int) -> None:
        self._backend.seq_rm(seq, 0, -1)
        self.ledger.drop(seq)
        self._free.append(seq)

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
        self._on_event(request.request_id, Finished(reason, len(request.prompt), produced, stop_sequence, thought))
        self._free_job(job)

    def _free_job(self, job: Job) -> None:
        for choice in job.choices:
            if choice is not job.primary and not choice.released:
                choice.released = True
                self._release(choice.seq)
        if job.choices and not job.dropped:
            primary = job.primary.seq
            length = self.ledger.length(primary)
            if length > 0 and not job.cancelled:
                for redundant in self.cache.add(primary, job.tokens[:length]):
                    self._release(redundant)
                while len(self.cache) > self.slots:  # as many cached prompts as slots keeps ids dense
                    self._evict(self.cache.oldest())  # type: ignore[arg-type]
            else:
                self._release(primary)

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
