"""Which parent serves a piece, and which piece a background worker fetches next (pure).

The P2P fetcher (:mod:`dffs.daemon.p2p`) asks these two questions for every
piece; the swarm simulator (``scripts/sim``) imports the same functions, so
what it simulates is what daemons do.

* A reader's piece goes to the parent that announced it and would deliver it
  soonest: its recent cost (seconds per MiB of the pieces it delivered, a moving
  average) times the transfers it would then have in flight. A parent not
  measured yet counts as good as the best measured one, so every parent gets
  tried; ties go to the least loaded, then the one with fewest failures. A
  parent on a crawling link so ends up with almost nothing, and one that
  failed ``MAX_PARENT_FAILURES`` times is not asked again.
* Background workers take the rarest piece first among those some parent
  holds, ties broken at random, so the peers of a swarm fetch different pieces
  and trade them instead of all queueing on the same parent for piece 0.
  Before any parent holds anything there is nothing to prefer: a random piece
  (or the first, when the pieces come from the origin in order, after those a
  helper is said to hold but has not announced yet).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

#: Failures after which a parent is no longer asked for pieces.
MAX_PARENT_FAILURES = 3
#: Weight of the newest piece in a parent's moving-average cost.
COST_WEIGHT = 0.3
MiB = 1 << 20


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
    #: Seconds per MiB of the pieces it delivered (moving average); None until the first.
    cost: float | None = None
    #: When this peer adopted it (the caller's clock): a parent just given may not have said
    #: what it holds yet.
    added_at: float = 0.0
    #: Pieces the scheduler said it holds when it named it a helper (announced or not yet), and
    #: when: the origin waits a moment for their announcement instead of sending them again.
    promised: frozenset[int] = frozenset()
    promised_at: float = 0.0

    def delivered(self, seconds: float, length: int) -> None:
        """A piece of ``length`` bytes arrived from this parent in ``seconds``."""
        sample = max(1e-4, seconds) * MiB / max(1, length)  # a floor: "instant" still counts load
        self.cost = sample if self.cost is None else (1 - COST_WEIGHT) * self.cost + COST_WEIGHT * sample

    @property
    def usable(self) -> bool:
        return self.failures < MAX_PARENT_FAILURES

    def serves(self, number: int) -> bool:
        return self.usable and number in self.pieces


def pick_parent(parents: Iterable[Parent], number: int) -> Parent | None:
    """The parent to fetch piece ``number`` from, or None when no usable parent has it."""
    having = [p for p in parents if p.serves(number)]
    measured = [p.cost for p in having if p.cost is not None]
    best = min(measured, default=0.0)

    def expected(p: Parent) -> tuple[float, int, int]:
        cost = best if p.cost is None else p.cost
        return (cost * (p.active + 1), p.active, p.failures)

    return min(having, key=expected, default=None)


def choose_piece(candidates: Sequence[int], parents: Sequence[Parent], rng: random.Random, *, in_order: bool) -> int:
    """The next piece for a background worker among ``candidates`` (not empty).

    ``in_order``: the pieces come from the origin anyway, so take the lowest.
    """
    held = {n: sum(1 for p in parents if p.serves(n)) for n in candidates}
    available = [n for n, count in held.items() if count]
    if not available:
        if not in_order:
            return rng.choice(candidates)
        promised = frozenset().union(*(p.promised for p in parents if p.usable))
        return min(candidates, key=lambda n: (n in promised, n))  # a helper's pieces last: they may come
    return min(available, key=lambda n: (held[n], rng.random()))


def unusable_parent(peer: Any, own_host_id: str) -> str | None:
    """Why a candidate parent from the scheduler (a ``dffs.common.Peer``) cannot be used (None: it can)."""
    if not peer.id or len(peer.id) > 256:
        return "no id, or one too long"
    if peer.host.id == own_host_id:
        return "it is this host"
    try:
        ipaddress.ip_address(peer.host.ip)
    except ValueError:
        return f"bad address {peer.host.ip[:64]!r}"
    for name, port in (("port", peer.host.port), ("download_port", peer.host.download_port)):
        if not 0 < port < 65536:
            return f"bad {name} {port}"
    return None
