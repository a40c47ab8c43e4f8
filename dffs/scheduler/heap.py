"""Short pauses of Python's cycle collector while the scheduler's graph is large.

CPython's collector scans every tracked object in a full (generation 2) pass, and starts one
whenever the objects promoted since the last pass reach a quarter of the long-lived ones. A
scheduler's graph is long-lived and large: at 10,000 hosts with 41,600 peers a full pass took
210-320 ms on the 2-vCPU test machine, all of it on the event loop that serves every stream
(`scripts/bench/scheduler.py` caught it inside single decisions). The graph does not need the
collector: it removes every edge both ways when it drops a peer, a host or a task, so what it
drops is freed by reference counting (with the collector off, `tests/test_scheduler_policy.py::
test_the_graph_frees_what_it_drops_without_the_cycle_collector`). So after each housekeeping
pass the scheduler collects the young generations (cheap) and moves what survived into the
permanent generation (:func:`gc.freeze`), which full passes skip: they then scan only what was
allocated since.

A reference cycle that becomes garbage *after* it was frozen is not collected while it stays
frozen (from other code: an exception's traceback, a library's objects). So once every
``full_every`` seconds (an hour by default) the frozen objects are handed back and one full
pass runs, at a time the scheduler chose: that bounds such garbage.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two full collections of everything, the frozen objects included.
FULL_EVERY = 3600.0


class Heap:
    """Freezes what survived after each housekeeping pass; a full collection every ``full_every`` s."""

    def __init__(self, full_every: float = FULL_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.full_every = full_every
        self.clock = clock
        self._last_full = clock()

    def settle(self) -> int:
        """Collect what is young (or, once ``full_every`` seconds have passed, everything), then
        freeze what survived. Returns the number of objects frozen."""
        started = time.perf_counter()
        full = self.clock() - self._last_full >= self.full_every
        if full:
            self._last_full = self.clock()
            gc.unfreeze()
            found = gc.collect()
        else:
            found = gc.collect(1)  # garbage that is young is not frozen
        gc.freeze()
        frozen = gc.get_freeze_count()
        log.log(
            logging.INFO if full else logging.DEBUG,
            "event=heap_settled full=%s collected=%d frozen=%d pause_ms=%.1f",
            full,
            found,
            frozen,
            (time.perf_counter() - started) * 1e3,
        )
        return frozen
