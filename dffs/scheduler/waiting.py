"""Peers waiting for an answer, and which of them a change can help.  Pure.

A peer the policy cannot answer yet (``Retry``) waits until its next round or
until something changes that may let it be answered.  Waking every waiter of
a task on every message made each piece report cost a full decision per
waiter; here a change is an :class:`~dffs.scheduler.resource.Offer` noted by
the graph, and it wakes at most ``offer.budget`` waiters, oldest first, that
it can help:

* an offer with a ``server`` (a peer that can now serve: its first piece, a
  freed upload slot, a seed starting, a finished download) wakes waiters on
  other hosts that have not blocked it and lack a piece it holds; with
  ``piece`` (the server's newest piece) only those for whom that piece is
  the first thing the server holds that they lack -- the others could use it
  before, so the piece changes nothing for them.  The server is handed to
  each woken decision as a hint, so the decision examines it besides its
  random sample.  A woken decision takes up to ``share`` parents (the
  candidate parent limit), so ``budget`` free slots wake ``budget / share``
  waiters, rounded up;
* an offer without a server (a peer gone, a seed host appeared) may change
  the policy's answer for anyone: any waiter qualifies.

At most ``scan_limit`` waiters are examined per offer, so a message costs
bounded work however many peers wait; a waiter not reached keeps its round
timer.  A woken waiter leaves the room; the service puts it back if its next
decision is ``Retry`` again, at the back, so nobody is skipped forever.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from dffs.scheduler.resource import Offer, Peer, Task

#: Waiters examined per offer, at most.
SCAN_LIMIT = 256


@attrs.define(eq=False)
class Waiter:
    peer: Peer
    #: Called once when the waiter is woken (the service sets an event).
    wake: Callable[[], None]
    #: Where a woken waiter's hints go (the session's list, read by its next decision).
    hints: list[Peer]


def can_help(offer: Offer, peer: Peer) -> bool:
    """Whether ``offer`` may let the waiting ``peer`` be answered."""
    server = offer.server
    if server is None:
        return True
    if server is peer or server.host is peer.host:
        return False
    blocked = peer.blocked_parents
    if server.id in blocked or (server.aliases and not server.aliases.isdisjoint(blocked)):
        return False
    lacks = server.pieces & ~peer.pieces
    if offer.piece is not None:
        return lacks == 1 << offer.piece  # the new piece is what makes the server useful to it
    return server.is_feeding_seed or bool(lacks)


class WaitingRoom:
    """Waiting peers per task, oldest first."""

    def __init__(self, *, scan_limit: int = SCAN_LIMIT):
        self.scan_limit = scan_limit
        self._tasks: dict[Task, dict[Peer, Waiter]] = {}
        #: Waiters woken, in all (for metrics and tests).
        self.woken = 0

    def add(self, peer: Peer, wake: Callable[[], None], hints: list[Peer]) -> None:
        """``peer`` waits; ``wake()`` is called at most once, when an offer can help it."""
        waiters = self._tasks.setdefault(peer.task, {})
        waiters.pop(peer, None)  # re-added: to the back
        waiters[peer] = Waiter(peer, wake, hints)

    def discard(self, peer: Peer) -> None:
        waiters = self._tasks.get(peer.task)
        if waiters is not None:
            waiters.pop(peer, None)
            if not waiters:
                del self._tasks[peer.task]

    def has_waiters(self, task: Task) -> bool:
        return task in self._tasks

    def __len__(self) -> int:
        return sum(len(w) for w in self._tasks.values())

    def __contains__(self, peer: object) -> bool:
        return isinstance(peer, Peer) and peer in self._tasks.get(peer.task, ())

    def waiting(self, task: Task) -> list[Peer]:
        """The task's waiting peers, oldest first."""
        return list(self._tasks.get(task, ()))

    def offer(self, offer: Offer, *, share: int = 1) -> list[Peer]:
        """Wake the waiters ``offer`` can help (at most its budget, shared ``share`` ways); returns them."""
        if offer.task is None:
            return [p for task in list(self._tasks) for p in self._wake(task, attrs.evolve(offer, task=task), share)]
        return self._wake(offer.task, offer, share)

    def _wake(self, task: Task, offer: Offer, share: int) -> list[Peer]:
        waiters = self._tasks.get(task)
        if not waiters:
            return []
        budget = -(-offer.budget // max(1, share)) if offer.server is not None else offer.budget
        chosen: list[Waiter] = []
        for scanned, waiter in enumerate(waiters.values()):
            if len(chosen) >= budget or scanned >= self.scan_limit:
                break
            if can_help(offer, waiter.peer):
                chosen.append(waiter)
        for waiter in chosen:
            del waiters[waiter.peer]
        if not waiters:
            del self._tasks[task]
        for waiter in chosen:
            if offer.server is not None:
                waiter.hints.append(offer.server)
            waiter.wake()
        self.woken += len(chosen)
        return [w.peer for w in chosen]

    def wake_all(self) -> int:
        """Wake every waiter (the cluster's config changed: any answer may differ)."""
        everyone = [w for waiters in self._tasks.values() for w in waiters.values()]
        self._tasks.clear()
        for waiter in everyone:
            waiter.wake()
        self.woken += len(everyone)
        return len(everyone)
