"""Parent selection: which peers may serve a peer, and in what order.  Pure.

``candidate_parents(peer, graph)`` runs every other peer of the task through
:func:`exclusion` (a reason to skip it, or None) and ranks the survivors by
:func:`score`; the top ``limit`` win.

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

import random
import statistics
from collections.abc import Collection, Iterable, Sequence

import attrs

from dffs.scheduler.resource import Graph, Peer, PeerState

#: Number of location elements compared ("area|country|province|city|zone").
MAX_LOCATION_ELEMENTS = 5
#: Recent upload costs averaged into the speed part.
SPEED_SAMPLES = 8
#: Score of a parent nobody has fetched from yet (neither favoured nor shunned).
UNMEASURED_SPEED = 0.5

BAD_MIN_HISTORY = 3
BAD_NORMAL_HISTORY = 30
BAD_RATIO = 20.0
BAD_SIGMAS = 3.0
#: Costs are seconds per MiB; below this they are noise (loopback, page cache).
BAD_COST_FLOOR = 1e-3


@attrs.frozen
class Weights:
    free_upload: float = 0.20
    pieces: float = 0.20
    speed: float = 0.20
    upload_success: float = 0.10
    host_type: float = 0.10
    idc: float = 0.10
    location: float = 0.10

    def total(self, parts: dict[str, float]) -> float:
        return sum(getattr(self, name) * value for name, value in parts.items())


DEFAULT_WEIGHTS = Weights()

#: States a parent may be in.
_PARENT_STATES = frozenset({PeerState.TRIGGERED, PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED})


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
    """Whether the last of ``costs`` (oldest first) is an outlier against the rest."""
    if len(costs) < min_history + 1:
        return False
    *history, last = costs
    mean = max(statistics.fmean(history), BAD_COST_FLOOR)
    if len(history) < normal_history:
        return last > ratio * mean
    stdev = statistics.pstdev(history)
    return last > mean + sigmas * stdev and last > 2 * mean


def is_feeding_seed(parent: Peer) -> bool:
    """A seed that is fetching the task from the origin: useful before it has pieces."""
    return parent.host.is_seed and parent.state in (PeerState.TRIGGERED, PeerState.BACK_TO_SOURCE)


def creates_cycle(parent: Peer, child: Peer) -> bool:
    """True when ``parent`` downloads from ``child``, directly or transitively."""
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


def exclusion(parent: Peer, child: Peer, blocklist: Collection[str] = ()) -> str | None:
    """Why ``parent`` cannot serve ``child`` (see the module docstring), or None."""
    if parent is child:
        return "self"
    if parent.host is child.host:
        return "same_host"
    if (
        parent.id in blocklist
        or parent.host.id in blocklist
        or parent.id in child.blocked_parents
        or not parent.aliases.isdisjoint(child.blocked_parents)
        or not parent.aliases.isdisjoint(blocklist)
    ):
        return "blocked"
    if parent.state not in _PARENT_STATES:
        return "state"
    if parent.host.disable_shared:
        return "not_shared"
    if parent.host.suspect_reports:
        return "suspect"
    if parent.host.free_upload_slots <= 0 and child.id not in parent.children:
        return "no_upload_slot"
    if not (is_feeding_seed(parent) or parent.has_pieces_missing_from(child)):
        return "useless"
    if creates_cycle(parent, child):
        return "cycle"
    if is_bad_parent(parent.upload_costs):
        return "bad"
    return None


def location_affinity(a: str, b: str) -> float:
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


def idc_affinity(a: str, b: str) -> float:
    return 1.0 if a and b and a.lower() == b.lower() else 0.0


def recent_upload_cost(parent: Peer) -> float | None:
    costs = list(parent.upload_costs)[-SPEED_SAMPLES:]
    return statistics.fmean(costs) if costs else None


def score_parts(parent: Peer, child: Peer, *, best_cost: float | None, most_pieces: int) -> dict[str, float]:
    """The seven parts of the score, each in 0..1 (see the module docstring)."""
    host = parent.host
    free = host.upload_slots - host.upload_used + (1 if child.id in parent.children else 0)
    free_upload = min(1.0, max(0.0, free / host.upload_slots)) if host.upload_slots > 0 else 0.0

    piece_count = parent.task.piece_count
    if parent.state is PeerState.SUCCEEDED:
        pieces = 1.0
    elif piece_count:
        pieces = min(1.0, parent.finished_count / piece_count)
    else:
        pieces = parent.finished_count / most_pieces if most_pieces else 0.0

    cost = recent_upload_cost(parent)
    if cost is None or best_cost is None:
        speed = UNMEASURED_SPEED
    else:
        speed = min(1.0, max(best_cost, 1e-9) / max(cost, 1e-9))

    attempts = host.upload_count + host.upload_failed_count
    upload_success = host.upload_count / attempts if attempts else 1.0

    return {
        "free_upload": free_upload,
        "pieces": pieces,
        "speed": speed,
        "upload_success": upload_success,
        "host_type": 0.5 if host.is_seed else 1.0,
        "idc": idc_affinity(host.effective_idc, child.host.effective_idc),
        "location": location_affinity(host.effective_location, child.host.effective_location),
    }


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
    ranked = []
    for parent in parents:
        parts = score_parts(parent, peer, best_cost=best_cost, most_pieces=most_pieces)
        ranked.append(Candidate(parent, weights.total(parts), parts))
    ranked.sort(key=lambda c: (-c.score, c.peer.id))
    return ranked


def filter_parents(
    peer: Peer, blocklist: Collection[str] = (), *, sample: int = 0
) -> tuple[list[Peer], dict[str, str]]:
    """(usable parents, {excluded peer id: reason}) among the peer's task's peers
    (a random ``sample`` of them when it is positive and the task has more)."""
    usable: list[Peer] = []
    excluded: dict[str, str] = {}
    others = [p for p in peer.task.peers.values() if p is not peer]
    if 0 < sample < len(others):
        others = random.sample(others, sample)
    for other in others:
        reason = exclusion(other, peer, blocklist)
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
) -> list[Peer]:
    """The best ``limit`` parents for ``peer``, best first; empty when none is usable.

    ``graph`` is accepted for symmetry with the rest of the scheduler; the
    task's peers are reached through ``peer.task``.
    """
    if limit <= 0:
        return []
    usable, _ = filter_parents(peer, blocklist, sample=sample)
    return [c.peer for c in rank_parents(peer, usable, weights=weights)[:limit]]
