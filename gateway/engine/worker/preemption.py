"""Paused requests: set aside for a more urgent one (`pause`/`resume`), with their samplers, grammar
and output as they are. Their cells stay while room allows; when an admission needs them they are
dropped (`drop_latest`), and on resume each choice's cells are recomputed from the prompt and the
tokens it had decoded (`replay` rows, no logits) before it decodes its pending token, so its answer
is the one it would have been.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from gateway.engine.worker.pool import SequencePool
from gateway.engine.worker.sequences import Job


class Preemption:
    def __init__(
        self, pool: SequencePool, running: list[Job], waiting: deque[Job], slots: int, finish: Callable[[Job], None]
    ) -> None:
        self._pool = pool
        self._running = running  # the batch's own lists, shared: readmission moves jobs between them
        self._waiting = waiting
        self._slots = slots
        self._finish = finish
        self.paused: dict[int, Job] = {}  # set aside until resumed, in pause order
        self.resumed: deque[Job] = deque()  # resumed, to be readmitted before any waiting request
        self.replayed_tokens = 0  # tokens evaluated again for paused requests whose cells were dropped

    def pause(self, request_id: int) -> None:
        """Set a request aside: it takes no step until resumed (unknown or finished: nothing)."""
        for queue in (self._waiting, self._running, self.resumed):
            for job in queue:
                if job.request.request_id == request_id and not job.finished:
                    queue.remove(job)
                    self.paused[request_id] = job
                    return

    def resume(self, request_id: int) -> None:
        job = self.paused.pop(request_id, None)
        if job is not None:
            self.resumed.append(job)

    def cancel(self, request_id: int) -> None:
        job = self.paused.pop(request_id, None)
        if job is not None:
            self.resumed.append(job)  # ended by the next step, as a waiting request is

    def readmit(self) -> bool:
        """Resumed requests back into the batch, in order; False while one waits for a slot or room."""
        while self.resumed:
            job = self.resumed[0]
            if job.finished:
                self.resumed.popleft()
                self._finish(job)
                continue
            if not job.choices:  # paused before it was placed: it is placed as a new request
                self.resumed.popleft()
                self._waiting.appendleft(job)
                continue
            if len(self._running) >= self._slots:
                return False
            if job.dropped and job.prefilled < len(job.request.prompt):
                self.resumed.popleft()  # nothing was sampled yet: start it over, as if new
                job.choices, job.prefilled, job.reserve, job.tokens, job.dropped = [], 0, 0, [], False
                self._waiting.appendleft(job)
                continue
            replays = self._replays(job) if job.dropped else {}
            need = job.reserve + sum(len(tokens) for tokens in replays.values())
            if not self._room(need, len(replays), job):
                return False
            self.resumed.popleft()
            for choice in job.choices:
                if choice.index in replays:
                    choice.seq, choice.released = self._pool.take(), False
                    choice.replay, choice.pos = replays[choice.index], 0
            if job.dropped:
                self.replayed_tokens += sum(len(tokens) for tokens in replays.values())
                job.tokens = list(replays[0])
                job.reserve, job.dropped = need, False
            self._running.append(job)
        return True

    def drop_latest(self, keep: Job | None) -> bool:
        """Free the cells of the latest paused request that still holds some; False if none does."""
        for job in reversed([*self.paused.values(), *self.resumed]):
            if job is not keep and job.choices and not job.dropped:
                for choice in job.choices:
                    if not choice.released:
                        choice.released = True
                        self._pool.release(choice.seq)
                job.dropped = True
                return True
        return False

    @staticmethod
    def _replays(job: Job) -> dict[int, list[int]]:
        """Per choice whose cells were dropped and that still needs them (the first always: it keeps
        the prompt for reuse), the tokens to evaluate again."""
        prompt = job.request.prompt
        return {c.index: [*prompt, *c.history] for c in job.choices if c is job.primary or not c.done}

    def _room(self, need: int, sequences: int, job: Job) -> bool:
        """Cached prefixes evicted, then other paused requests' cells dropped, until `need` more cells
        and `sequences` ids fit."""
        while self._pool.committed(self._running) + need > self._pool.cells or self._pool.free_ids < sequences:
            if not self._pool.evict_oldest() and not self.drop_latest(keep=job):
                return False
        return True
