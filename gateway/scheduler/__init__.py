"""One owner of model state: which models are loaded, who holds them, who waits, what gets evicted.

Modules:
- `views`: immutable snapshots (`SlotView`, `Snapshot`): all that routes, admin and metrics see.
- `slot`: the mutable record of one model version (private), with its turns (`runtime.parallel`).
- `fairness`: who gets a model's next turn (interactive before batch, fair share between keys, aging,
  `max_concurrent`) and which batch hold is paused for an interactive one: a pure policy.
- `eviction`: room by memory vectors (host RAM and one pool per GPU), LRU eviction, rebalancing
  after measurement, eviction after a device ran out of memory, TTL expiry: pure functions of a
  snapshot (the decisions are `memory/planner.py`'s).
- `devices`: the GPUs as the scheduler sees them: pools and budgets, placement options, the worker's
  devices, memory an exited worker gave back that the driver does not show yet, measured figures.
- `reload`: a reload as a pure diff of two configurations.
- `cpu`: CPU threads lent per model, with a maximum wait (fairness across models).
- `lifecycle`: the model table, unload, drain, forced unload, crash; `loading`: load (single flight,
  room made, placed, measured, retried once after running out of device memory); `observer`: who is told.
- `hold`: a request's hold, an async context manager that releases exactly once.
- `core`: `Scheduler`: admission, reload, TTL.

Invariants (held by tests/fast/test_scheduler_invariants.py after every step):
1. Slots change only inside this package, on the event loop, and a read that gates a change is
   made in the same synchronous stretch as the change (no `await` between them).
2. A model with holds, a load under way, a drain or a retirement is never chosen for eviction or TTL.
3. Per model, `running <= runtime.parallel` and `running + waiting + quick <= max_queue`; the turns
   go to waiting holds in the order `fairness.py` sets (for one key at one priority: arrival order),
   and a paused (preempted) hold counts as waiting until it has a turn again.
4. At most one load per model version is under way; requests to a loaded model never wait for
   another model's load; a load is not tied to the request that started it.
5. A version chosen for unloading takes no new hold from that instant (state `unloading`) and
   counts its memory until its worker has exited, whoever else asks to unload it meanwhile and
   whether or not the caller that started the stop is cancelled (the stop is a task of its own);
   a version replaced by a reload does the same, and its successor opens only then.
6. A hold is released exactly once, however its request ends; when every request has ended, every
   count is zero and the CPU budget lends nothing.
7. A model has at most one CPU grant, shared by its running requests; no model waits for one longer
   than `gateway.cpu_wait_max`.
8. Memory is claimed per pool in the step that plans it: a load claims its estimate in every pool it
   touches (and a device's free memory counts it as taken until measured); measured figures replace
   the estimate on GPUs; without GPUs there is one pool, the host's, and nothing else changes.
"""

from gateway.scheduler.core import Scheduler
from gateway.scheduler.hold import Hold
from gateway.scheduler.observer import Observer
from gateway.scheduler.views import HOST_POOL, SlotView, Snapshot, State

__all__ = ["HOST_POOL", "Hold", "Observer", "Scheduler", "SlotView", "Snapshot", "State"]
