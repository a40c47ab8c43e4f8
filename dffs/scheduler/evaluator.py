"""Parent selection: which peers may serve a peer, and in what order.  Pure.

``candidate_parents(peer, graph)`` draws up to ``sample`` peers at random from
the task's pool of peers that can serve (``Task.servers``: 0 takes the whole
pool), adds the ``extra`` peers a change offered to this waiter, runs each
through :func:`exclusion` (a reason to skip it, or None) and ranks the
survivors by :func:`score`; the top ``limit`` win.

Bounded time
------------
A decision costs O(sample), not O(peers of the task): the pool already leaves
out every peer the ``state``, ``not_shared`` and ``useless``-without-pieces
filters would reject, the statistics of a parent's costs are exact sums its
:class:`~dffs.scheduler.resource.CostWindow` keeps as costs arrive (O(1) to
ask, whether or not a decision looked at the parent since its last change),
and the cycle check runs only for a peer that has children (a newcomer cannot
close a cycle) and only for candidates that have parents (nobody else can be
a descendant): then the peer's descendants are collected once per decision,
with set operations, at most ``CYCLE_WALK_LIMIT`` of them; beyond that, a
candidate that has parents of its own is treated as closing a cycle -- never
wrong, only conservative for a peer that thousands download from.

Filters, in order (the first that applies is the reason)
--------------------------------------------------------
``self``            the peer itself
``same_host``       a peer on the same host (one download per task per host)
``blocked``         in the caller's blocklist (peer id or host id) or in the
                    peer's own blocked parents (reschedules, permanent failures)
``state``           FAILED, LEAVING or PENDING (a pending peer has nothing yet
                    and may never start)
``not_shared``      the parent's host disabled sharing
``suspect``         the parent's host reported origin pieces whose digests
                    contradict the anchored ones
``no_upload_slot``  the parent's host has no free upload slot
``useless``         holds no piece this peer lacks; except a *seed* that is
                    fetching from the origin (TRIGGERED or BACK_TO_SOURCE),
                    whose pieces are on their way
``cycle``           the parent downloads from this peer, directly or through
                    other peers
``bad``             :func:`is_bad_parent` on the costs of pieces children
                    recently fetched from it

Score (0..1, higher is better): a weighted sum of seven parts, each 0..1
--------------------------------------------------------------------------
==================  ======  ==================================================
part                weight  value
==================  ======  ==================================================
``free_upload``     0.20    free upload slots / upload slots of the host
``pieces``          0.20    parent's finished pieces / task's piece count
                            (1 when the parent succeeded; relative to the best
                            candidate while the count is unknown)
``speed``           0.20    fastest candidate's recent upload cost / this
                            parent's (seconds per MiB, mean of the last 8
                            pieces children fetched); 0.5 when unmeasured
``upload_success``  0.10    pieces served / (served + failures reported) by
                            the host; 1 before any upload
``host_type``       0.10    normal host 1, seed 0.5: seeds are the scarce
                            shared resource, so equally good normal peers
                            offload them
``idc``             0.10    1 when both hosts name the same IDC
``location``        0.10    common leading elements of ``a|b|c|d|e``
                            locations / 5 (1 when equal)
==================  ======  ==================================================

Ties break on peer id, so the ranking is deterministic.  IDC and location come
from the Host fields, or the ``idc`` / ``location`` labels when those are empty.

Bad parents (:func:`is_bad_parent`, after Dragonfly's rule)
-----------------------------------------------------------
The last upload cost of a parent is compared with the ones before it: with
fewer than ``BAD_MIN_HISTORY`` earlier samples nothing is concluded; below
``BAD_NORMAL_HISTORY`` samples the parent is bad when the last piece took more
than ``BAD_RATIO`` (20) times the mean; from there on (costs roughly normal)
when it exceeds mean + 3 standard deviations and twice the mean.
"""

from __future__ import annotations

import functools
import math
import operator
import random
from collections.abc import Collection, Iterable, Sequence
from itertools import chain

import attrs

from dffs.scheduler.resource import (
    COST_BITS,
    PARENT_STATES,
    RECENT_COSTS,
    Graph,
    HostType,
    Peer,
    PeerState,
    cost_stats,
)

#: Number of location elements compared ("area|country|province|city|zone").
MAX_LOCATION_ELEMENTS = 5
#: Recent upload costs averaged into the speed part.
SPEED_SAMPLES = RECENT_COSTS
#: Score of a parent nobody has fetched from yet (neither favoured nor shunned).
UNMEASURED_SPEED = 0.5

BAD_MIN_HISTORY = 3
BAD_NORMAL_HISTORY = 30
BAD_RATIO = 20.0
BAD_SIGMAS = 3.0
#: Costs are seconds per MiB; below this they are noise (loopback, page cache).
BAD_COST_FLOOR = 1e-3
#: Descendants of a rescheduling peer collected for the cycle check, at most.
CYCLE_WALK_LIMIT = 2048

_random = random.Random()


#: The score's parts, in the order :func:`score_vector` gives them.
PARTS = ("free_upload", "pieces", "speed", "upload_success", "host_type", "idc", "location")


@attrs.frozen(slots=False)  # slots=False: room for the cached weight vector
class Weights:
    free_upload: float = 0.20
    pieces: float = 0.20
    speed: float = 0.20
    upload_success: float = 0.10
    host_type: float = 0.10
    idc: float = 0.10
    location: float = 0.10

    def total(self, parts: dict[str, float]) -> float:
        return _weighted(self.vector, tuple(parts[name] for name in PARTS))

    @functools.cached_property
    def vector(self) -> tuple[float, ...]:
        """The weights in :data:`PARTS` order (a decision's scoring loop reads them as a tuple)."""
        return tuple(getattr(self, name) for name in PARTS)


DEFAULT_WEIGHTS = Weights()

#: States a parent may be in.
_PARENT_STATES = PARENT_STATES


@attrs.frozen
class Candidate:
    peer: Peer
    score: float
    parts: dict[str, float] = attrs.field(eq=False)


def is_bad_parent(
    costs: Sequence[float],
    *,
    min_history: int = BAD_MIN_HISTORY,
    normal_history: int = BAD_NORMAL_HISTORY,
    ratio: float = BAD_RATIO,
    sigmas: float = BAD_SIGMAS,
) -> bool:
    """Whether the last of ``costs`` (oldest first) is an outlier against the rest.

    On exact integer sums (:class:`~dffs.scheduler.resource.CostStats`), which a
    parent's :class:`CostWindow` keeps as costs arrive: O(1) per question, and
    the mean and variance are the exact ones, rounded once.
    """
    stats = cost_stats(costs)
    if stats is None or stats.history < min_history:
        return False
    n, total, last = stats.history, stats.total, stats.last
    raw_mean = total / (n << COST_BITS)
    mean = max(raw_mean, BAD_COST_FLOOR)
    if n < normal_history:
        return last > ratio * mean
    # n * sum(x^2) - sum(x)^2 >= 0 exactly (Cauchy-Schwarz): no cancellation, no clamp.
    variance = (n * stats.squares - total * total) / ((n * n) << (2 * COST_BITS))
    return last > mean + sigmas * math.sqrt(variance) and last > 2 * mean


def parent_is_bad(parent: Peer) -> bool:
    """:func:`is_bad_parent` on the parent's upload costs: O(1) (the window keeps the sums), and
    answered once per change of them (most decisions that sample a parent find it unchanged)."""
    costs = parent.upload_costs
    verdict = costs.verdict
    if verdict is None:
        verdict = costs.verdict = is_bad_parent(costs)
    return verdict


def is_feeding_seed(parent: Peer) -> bool:
    """A seed that is fetching the task from the origin: useful before it has pieces."""
    return parent.is_feeding_seed


def creates_cycle(parent: Peer, child: Peer) -> bool:
    """True when ``parent`` downloads from ``child``, directly or transitively."""
    if not child.children:
        return parent is child  # nobody downloads from child: no path back to it
    seen: set[int] = set()
    stack = [parent]
    while stack:
        node = stack.pop()
        if node is child:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.parents.values())
    return False


class Descendants:
    """The peers that download from ``peer``, directly or transitively: collected at most once
    per decision, and only when a candidate that could be one is asked about.

    Only a peer with parents can be anyone's descendant, so a candidate without
    (a finished peer, one on the origin, a seed) is answered without the walk.
    At most ``limit`` are collected; past that :meth:`may_contain` answers True
    for any candidate that has parents.
    """

    __slots__ = ("peer", "limit", "_found", "_complete")

    def __init__(self, peer: Peer, limit: int | None = None):
        self.peer = peer
        self.limit = CYCLE_WALK_LIMIT if limit is None else limit
        self._found: set[Peer] | None = None
        self._complete = True

    @property
    def found(self) -> set[Peer]:
        """The descendants collected (all of them when :attr:`complete`)."""
        if self._found is None:
            self._found = self._walk()
        return self._found

    @property
    def complete(self) -> bool:
        return self.found is not None and self._complete

    def _walk(self) -> set[Peer]:
        # Level by level with set operations: every edge is followed inside C code (this walk
        # is most of a rescheduling peer's decision when thousands download from it).
        found: set[Peer] = set()
        level = set(self.peer.children.values())
        while level:
            found |= level
            if len(found) > self.limit:
                self._complete = False
                break
            level = set(chain.from_iterable(map(dict.values, map(_children, level))))
            level -= found
        return found

    def may_contain(self, candidate: Peer) -> bool:
        if not candidate.parents:
            return False
        found = self.found
        return candidate in found or not self._complete


_children = operator.attrgetter("children")


def exclusion(
    parent: Peer, child: Peer, blocklist: Collection[str] = (), *, descendants: Descendants | None = None
) -> str | None:
    """Why ``parent`` cannot serve ``child`` (see the module docstring), or None.

    ``descendants``: the child's, when the caller collected them for several candidates.
    """
    if parent is child:
        return "self"
    host = parent.host
    if host is child.host:
        return "same_host"
    blocked = child.blocked_parents
    if (blocklist and (parent.id in blocklist or host.id in blocklist)) or (blocked and parent.id in blocked):
        return "blocked"
    if parent.aliases and (not parent.aliases.isdisjoint(blocked) or not parent.aliases.isdisjoint(blocklist)):
        return "blocked"
    if parent.state not in _PARENT_STATES:
        return "state"
    if host.disable_shared:
        return "not_shared"
    if host.suspect_reports:
        return "suspect"
    if host.unreachable_reporters and host.reported_unreachable:
        return "unreachable"
    if host.upload_slots <= host.upload_used and child.id not in parent.children:
        return "no_upload_slot"
    if not (parent.is_feeding_seed or parent.has_pieces_missing_from(child)):
        return "useless"
    if child.children:
        if descendants.may_contain(parent) if descendants is not None else creates_cycle(parent, child):
            return "cycle"
    if parent_is_bad(parent):
        return "bad"
    return None


@functools.lru_cache(maxsize=1 << 16)
def location_affinity(a: str, b: str) -> float:
    """Common leading ``|`` elements / 5 (cached: a cluster has few locations, a decision many candidates)."""
    if not a or not b:
        return 0.0
    if a.lower() == b.lower():
        return 1.0
    score = 0
    for x, y in zip(a.split("|")[:MAX_LOCATION_ELEMENTS], b.split("|")[:MAX_LOCATION_ELEMENTS], strict=False):
        if x.lower() != y.lower():
            break
        score += 1
    return score / MAX_LOCATION_ELEMENTS


@functools.lru_cache(maxsize=1 << 12)
def idc_affinity(a: str, b: str) -> float:
    return 1.0 if a and b and a.lower() == b.lower() else 0.0


def recent_upload_cost(parent: Peer) -> float | None:
    """Mean seconds/MiB of the last ``SPEED_SAMPLES`` pieces children fetched from ``parent``."""
    return parent.upload_costs.recent_mean()


def score_parts(
    parent: Peer,
    child: Peer,
    *,
    best_cost: float | None,
    most_pieces: int,
    cost: float | None | bool = False,
    child_idc: str | None = None,
    child_location: str | None = None,
) -> dict[str, float]:
    """The seven parts of the score, each in 0..1 (see the module docstring).

    ``cost`` (the parent's :func:`recent_upload_cost`), ``child_idc`` and
    ``child_location`` may be passed when the caller has them already.
    """
    if child_idc is None:
        child_idc = child.host.effective_idc
    if child_location is None:
        child_location = child.host.effective_location
    vector = score_vector(parent, child, best_cost, most_pieces, cost, child_idc, child_location)
    return dict(zip(PARTS, vector, strict=True))


def score_vector(
    parent: Peer,
    child: Peer,
    best_cost: float | None,
    most_pieces: int,
    cost: float | None | bool,
    child_idc: str,
    child_location: str,
) -> tuple[float, float, float, float, float, float, float]:
    """:func:`score_parts` as a tuple in :data:`PARTS` order: what a decision's loop scores
    with (no dict per candidate)."""
    host = parent.host
    slots = host.upload_slots
    if slots > 0:
        free = slots - host.upload_used + (1 if child.id in parent.children else 0)
        free_upload = 1.0 if free >= slots else (free / slots if free > 0 else 0.0)
    else:
        free_upload = 0.0

    piece_count = parent.task.piece_count
    if parent.state is PeerState.SUCCEEDED:
        pieces = 1.0
    elif piece_count:
        pieces = min(1.0, parent.finished_count / piece_count)
    else:
        pieces = parent.finished_count / most_pieces if most_pieces else 0.0

    if cost is False:
        cost = recent_upload_cost(parent)
    if cost is None or best_cost is None:
        speed = UNMEASURED_SPEED
    else:
        speed = min(1.0, max(best_cost, 1e-9) / max(cost, 1e-9))

    attempts = host.upload_count + host.upload_failed_count
    upload_success = host.upload_count / attempts if attempts else 1.0
    return (
        free_upload,
        pieces,
        speed,
        upload_success,
        0.5 if host.type is HostType.SEED else 1.0,
        idc_affinity(host.idc or host.labels.get("idc", ""), child_idc),
        location_affinity(host.location or host.labels.get("location", ""), child_location),
    )


def _weighted(w: tuple[float, ...], v: tuple[float, ...]) -> float:
    """The score: the parts' weighted sum, always summed in the same order (same floats, same ranking)."""
    return w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3] + w[4] * v[4] + w[5] * v[5] + w[6] * v[6]


def _scored(peer: Peer, parents: Iterable[Peer], weights: Weights) -> list[tuple[float, str, Peer]]:
    """(-score, peer id, parent) for each of ``parents``, best first."""
    parents = list(parents)
    costs = [recent_upload_cost(p) for p in parents]
    measured = [c for c in costs if c is not None]
    best_cost = min(measured) if measured else None
    most_pieces = max((p.finished_count for p in parents), default=0)
    idc, location = peer.host.effective_idc, peer.host.effective_location
    w = weights.vector
    scored = []
    for parent, cost in zip(parents, costs, strict=True):
        v = score_vector(parent, peer, best_cost, most_pieces, cost, idc, location)
        scored.append((-_weighted(w, v), parent.id, parent))
    scored.sort(key=lambda s: (s[0], s[1]))
    return scored


def rank_parents(
    peer: Peer,
    parents: Iterable[Peer],
    *,
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[Candidate]:
    """Score ``parents`` (already filtered) for ``peer``, best first."""
    parents = list(parents)
    measured = [c for c in map(recent_upload_cost, parents) if c is not None]
    best_cost = min(measured) if measured else None
    most_pieces = max((p.finished_count for p in parents), default=0)
    return [
        Candidate(parent, -negative, score_parts(parent, peer, best_cost=best_cost, most_pieces=most_pieces))
        for negative, _, parent in _scored(peer, parents, weights)
    ]


def draw_candidates(
    peer: Peer, sample: int, extra: Iterable[Peer] = (), rng: random.Random | None = None
) -> list[Peer]:
    """Up to ``sample`` peers at random from the pool that can serve ``peer``'s task (0: the
    whole pool), then those of ``extra`` still in the pool and not drawn."""
    pool = peer.task.servers
    drawn = pool.sample(sample if sample > 0 else len(pool), rng or _random)
    seen = {id(p) for p in drawn}
    for hint in extra:
        if id(hint) not in seen and hint in pool:
            seen.add(id(hint))
            drawn.append(hint)
    return drawn


def filter_parents(
    peer: Peer,
    blocklist: Collection[str] = (),
    *,
    sample: int | None = None,
    extra: Iterable[Peer] = (),
    rng: random.Random | None = None,
) -> tuple[list[Peer], dict[str, str]]:
    """(usable parents, {excluded peer id: reason}).

    ``sample`` None examines every peer of the task and names the reason for
    each one excluded (tests, diagnostics); a number examines what
    :func:`draw_candidates` draws, which is what decisions do.
    """
    if sample is None:
        others = [p for p in peer.task.peers.values() if p is not peer]
    else:
        others = draw_candidates(peer, sample, extra, rng)
    descendants = Descendants(peer) if peer.children else None
    usable: list[Peer] = []
    excluded: dict[str, str] = {}
    for other in others:
        reason = exclusion(other, peer, blocklist, descendants=descendants)
        if reason is None:
            usable.append(other)
        elif reason != "self":
            excluded[other.id] = reason
    return usable, excluded


def candidate_parents(
    peer: Peer,
    graph: Graph | None = None,
    *,
    limit: int = 4,
    blocklist: Collection[str] = frozenset(),
    weights: Weights = DEFAULT_WEIGHTS,
    sample: int = 0,
    extra: Iterable[Peer] = (),
    rng: random.Random | None = None,
) -> list[Peer]:
    """The best ``limit`` parents for ``peer``, best first; empty when none is usable.

    ``sample``: peers drawn from the task's pool of those that can serve (0:
    all of them); ``extra``: peers to examine as well (offered by a change).
    ``graph`` is accepted for symmetry with the rest of the scheduler; the
    task's peers are reached through ``peer.task``.
    """
    if limit <= 0:
        return []
    usable, _ = filter_parents(peer, blocklist, sample=sample, extra=extra, rng=rng)
    return [s[2] for s in _scored(peer, usable, weights)[:limit]]
