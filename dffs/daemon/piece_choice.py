"""Which parent serves a piece, and which piece a background worker fetches next (pure).

The P2P fetcher (:mod:`dffs.daemon.p2p`) asks these two questions for every
piece; the swarm simulator (``scripts/sim``) imports the same functions, so
what it simulates is what daemons do.

* A reader's piece goes to the least-loaded parent that announced it (fewest
  transfers in flight, then fewest failures); a parent that failed
  ``MAX_PARENT_FAILURES`` times is not asked again.
* Background workers take the rarest piece first among those some parent
  holds, ties broken at random, so the peers of a swarm fetch different pieces
  and trade them instead of all queueing on the same parent for piece 0.
  Before any parent holds anything there is nothing to prefer: a random piece
  (or the first, when the pieces come from the origin in order).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import attrs

#: Failures after which a parent is no longer asked for pieces.
MAX_PARENT_FAILURES = 3


@attrs.define(eq=False)
class Parent:
    """A candidate parent of one task, as this peer sees it."""

    id: str
    ip: str
    port: int
    download_port: int
    #: piece number -> digest ("blake3:<hex>") the parent announced
    pieces: dict[int, str] = attrs.Factory(dict)
    failures: int = 0
    #: Piece transfers from this parent in flight.
    active: int = 0

    @property
    def usable(self) -> bool:
        return self.failures < MAX_PARENT_FAILURES

    def serves(self, number: int) -> bool:
        return self.usable and number in self.pieces


def pick_parent(parents: Iterable[Parent], number: int) -> Parent | None:
    """The parent to fetch piece ``number`` from, or None when no usable parent has it."""
    having = [p for p in parents if p.serves(number)]
    return min(having, key=lambda p: (p.active, p.failures), default=None)


def choose_piece(candidates: Sequence[int], parents: Sequence[Parent], rng: random.Random, *, in_order: bool) -> int:
    """The next piece for a background worker among ``candidates`` (not empty).

    ``in_order``: the pieces come from the origin anyway, so take the lowest.
    """
    held = {n: sum(1 for p in parents if p.serves(n)) for n in candidates}
    available = [n for n, count in held.items() if count]
    if not available:
        return min(candidates) if in_order else rng.choice(candidates)
    return min(available, key=lambda n: (held[n], rng.random()))
