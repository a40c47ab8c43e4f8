"""Bandwidth sharing at piece granularity: links, flows between them, and time.  Pure (numpy).

A *link* is one direction of a host's connection (its upload or its
download) or the origin's, with a capacity in bytes/s.  A *flow* is one
piece (or range) in transit from a source link to a destination link.  Flows
get rates close to max-min fair sharing, the way TCP flows on shared links
settle: a few rounds of water filling in which every unfrozen flow takes the
smaller of its two links' equal shares of what is left, and flows held back
by a link that is now full stop growing.  No packets, no slow start, no
losses: this is the fluid model, recomputed only when the set of flows
changes.

:meth:`FluidNetwork.advance` moves time forward and returns the flows that
completed.  Flows due within ``quantum`` seconds of the first one complete
together (early by at most ``quantum``), which keeps the number of steps
proportional to simulated time rather than to the number of pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Rounds of water filling per rate computation; more change the rates by well under 1 % here.
FILL_ROUNDS = 3


class FluidNetwork:
    def __init__(self, *, quantum: float = 1e-3):
        self.quantum = quantum
        self._capacity: list[float] = []
        self._cap = np.zeros(0)
        size = 1024
        self._src = np.zeros(size, dtype=np.int64)
        self._dst = np.zeros(size, dtype=np.int64)
        self._left = np.zeros(size)
        self._rate = np.zeros(size)
        self._active = np.zeros(size, dtype=bool)
        self._free: list[int] = list(range(size - 1, -1, -1))
        self._done: dict[int, Callable[[], None]] = {}
        self._dirty = False
        #: Bytes carried per link, in all.
        self.carried = np.zeros(0)

    # ---- links -------------------------------------------------------------

    def add_link(self, capacity: float) -> int:
        """A link of ``capacity`` bytes/s; returns its index."""
        if not capacity > 0:
            raise ValueError(f"link capacity must be positive, not {capacity}")
        self._capacity.append(float(capacity))
        self._cap = np.array(self._capacity)
        self.carried = np.concatenate([self.carried, [0.0]])
        return len(self._capacity) - 1

    # ---- flows -------------------------------------------------------------

    def start(self, src: int, dst: int, size: float, done: Callable[[], None]) -> int:
        """Send ``size`` bytes from link ``src`` to link ``dst``; ``done()`` when they arrived."""
        if not self._free:
            self._grow()
        flow = self._free.pop()
        self._src[flow], self._dst[flow], self._left[flow] = src, dst, max(float(size), 1.0)
        self._active[flow] = True
        self._done[flow] = done
        self._dirty = True
        return flow

    def _grow(self) -> None:
        old = len(self._src)
        for name in ("_src", "_dst", "_left", "_rate", "_active"):
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros(old, dtype=array.dtype)]))
        self._free.extend(range(2 * old - 1, old - 1, -1))

    @property
    def flows(self) -> int:
        return len(self._done)

    def _rates(self) -> None:
        active = np.flatnonzero(self._active)
        self._rate[:] = 0.0
        if not len(active):
            return
        src, dst = self._src[active], self._dst[active]
        n_links = len(self._cap)
        left = self._cap.copy()
        rate = np.zeros(len(active))
        growing = np.ones(len(active), dtype=bool)
        for _ in range(FILL_ROUNDS):
            if not growing.any():
                break
            s, d = src[growing], dst[growing]
            n_src = np.bincount(s, minlength=n_links)
            n_dst = np.bincount(d, minlength=n_links)
            share = np.minimum(left[s] / n_src[s], left[d] / n_dst[d])
            rate[growing] += share
            left -= np.bincount(s, weights=share, minlength=n_links) + np.bincount(d, weights=share, minlength=n_links)
            full = left <= 1e-9 * self._cap
            growing &= ~(full[src] | full[dst])
        self._rate[active] = rate
        self._dirty = False

    def next_completion(self) -> float:
        """Seconds until the first flow completes at the current rates (inf without flows)."""
        if self._dirty:
            self._rates()
        active = self._active
        if not active.any():
            return math.inf
        return float(np.min(self._left[active] / self._rate[active]))

    def advance(self, seconds: float) -> list[Callable[[], None]]:
        """Move ``seconds`` forward; the callbacks of the flows that completed, first due first.

        Flows due within ``quantum`` after the end of the step complete with it.
        """
        if self._dirty:
            self._rates()
        active = np.flatnonzero(self._active)
        if not len(active):
            return []
        rate = self._rate[active]
        sent = np.minimum(rate * seconds, self._left[active])
        self._left[active] -= sent
        np.add.at(self.carried, self._src[active], sent)
        np.add.at(self.carried, self._dst[active], sent)
        due = self._left[active] <= rate * self.quantum + 1e-6
        finished = active[due]
        if not len(finished):
            return []
        order = finished[np.argsort(self._left[finished] / np.maximum(self._rate[finished], 1e-300))]
        np.add.at(self.carried, self._src[order], self._left[order])
        np.add.at(self.carried, self._dst[order], self._left[order])
        self._left[order] = 0.0
        self._active[order] = False
        callbacks = [self._done.pop(int(f)) for f in order]
        self._free.extend(int(f) for f in order)
        self._dirty = True
        return callbacks
