"""The scheduler's in-memory graph: hosts, tasks, peers, their pieces and edges.

Pure: no I/O, no threads, no wall clock.  Time comes from an injected
``clock`` (monotonic seconds), so TTLs and GC are tested with a fake clock.
The service owns one :class:`Graph` and calls it from a single thread (the
event loop), so nothing here locks.

Vocabulary
----------
* A **host** is one daemon (normal or seed).  It announces itself
  periodically; a host silent for longer than its TTL is dropped with its peers.
* A **task** is one remote object, keyed by the task id every daemon derives
  the same way.
* A **peer** is one host's download of one task.  Its life is a small state
  machine (:data:`TRANSITIONS`)::

      TRIGGERED --adopt--> PENDING --start----------> RUNNING -----finish--> SUCCEEDED
                                   --back_to_source-> BACK_TO_SOURCE --finish--> SUCCEEDED
      any live state --fail--> FAILED;   any state but LEAVING --leave--> LEAVING

  ``TRIGGERED`` is a placeholder the scheduler creates on a seed host when it
  orders that seed to fetch a task from the origin; the seed daemon's own
  registration for the task *adopts* it (the placeholder's id stays valid as
  an alias, because children were already told about it).
* An **edge** parent -> child exists while the child downloads from the
  parent.  Edges are what upload slots count and what cycle detection walks;
  they are dropped when the child ends (finishes, fails, leaves) or is
  rescheduled.

Piece costs are kept as seconds per MiB so pieces of different lengths (the
last one is short) compare fairly.

Indexes
-------
A scheduling decision must not scan a task's peers or the cluster's hosts, so
the graph keeps what decisions ask for up to date as it changes: per task the
number of peers in each state, the peers that can serve others
(:attr:`Task.servers`, the pool parents are sampled from), the peers fetching
from the origin and the task's seed peers; per host the upload slots in use;
the seed hosts.  A peer's ``state`` and ``need_back_to_source`` are properties
that re-index the peer when set, so no assignment can leave an index stale.

Offers
------
With ``collect_offers`` the graph also notes, as :class:`Offer` records, the changes
that may let a waiting peer be answered (a peer that can now serve, a freed
upload slot, a peer gone that limited the origin); the scheduler core hands
them to its waiting room (:mod:`dffs.scheduler.waiting`) after each request,
which wakes only the waiters an offer can help.
"""

from __future__ import annotations

import enum
import math
import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

import attrs

from dffs.scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MiB = 1024 * 1024

#: Recent piece costs kept per peer for bad-parent detection and scoring.
COST_WINDOW = 64
#: Distinct hosts that must fail to reach a host before it counts as gone (one could be the
#: reporter's own network trouble, or a liar).
UNREACHABLE_REPORTERS = 2


class HostType(enum.Enum):
    NORMAL = "normal"
    SEED = "seed"

    # Enum's own __hash__ is Python code; states and types are looked up in
    # sets and dicts on every decision, and members are singletons.
    __hash__ = object.__hash__


def set_bits(bits: int, limit: int | None = None) -> Iterator[int]:
    """The numbers of the set bits of ``bits``, lowest first (at most ``limit`` of them)."""
    digits = bin(bits)[:1:-1]  # lowest bit first: linear in the bits, unlike shifting a big int
    found, at = 0, digits.find("1")
    while at >= 0 and (limit is None or found < limit):
        yield at
        found += 1
        at = digits.find("1", at + 1)


class PeerState(enum.Enum):
    TRIGGERED = "triggered"
    PENDING = "pending"
    RUNNING = "running"
    BACK_TO_SOURCE = "back_to_source"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LEAVING = "leaving"

    __hash__ = object.__hash__


#: Peers still downloading (or about to): they hold edges to parents.
ACTIVE_STATES = frozenset({PeerState.TRIGGERED, PeerState.PENDING, PeerState.RUNNING, PeerState.BACK_TO_SOURCE})
#: Peers that have, or will soon have, pieces for others.
LIVE_STATES = ACTIVE_STATES | {PeerState.SUCCEEDED}
#: States a parent may be in (a PENDING peer has nothing yet and may never start).
PARENT_STATES = frozenset({PeerState.TRIGGERED, PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED})
#: A seed in these states is fetching from the origin: useful before it has pieces.
FEEDING_STATES = frozenset({PeerState.TRIGGERED, PeerState.BACK_TO_SOURCE})

_S = PeerState
#: (state, event) -> next state.  Anything else is a protocol error.
TRANSITIONS: Mapping[tuple[PeerState, str], PeerState] = {
    (_S.TRIGGERED, "adopt"): _S.PENDING,
    (_S.TRIGGERED, "fail"): _S.FAILED,
    **{(s, "start"): _S.RUNNING for s in (_S.PENDING, _S.RUNNING, _S.BACK_TO_SOURCE)},
    **{(s, "back_to_source"): _S.BACK_TO_SOURCE for s in (_S.PENDING, _S.RUNNING, _S.BACK_TO_SOURCE)},
    **{(s, "finish"): _S.SUCCEEDED for s in (_S.PENDING, _S.RUNNING, _S.BACK_TO_SOURCE)},
    **{(s, "fail"): _S.FAILED for s in (_S.PENDING, _S.RUNNING, _S.BACK_TO_SOURCE)},
    **{(s, "leave"): _S.LEAVING for s in PeerState if s is not _S.LEAVING},
}


def next_state(state: PeerState, event: str) -> PeerState:
    """The state after ``event``, or FailedPrecondition naming both."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise FailedPrecondition(f"peer in state {state.value} cannot {event.replace('_', ' ')}") from None


class TaskState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    __hash__ = object.__hash__


#: Recent costs the speed part of a parent's score averages (:meth:`CostWindow.recent_mean`).
RECENT_COSTS = 8
#: Costs are summed exactly as integers in units of 2**-COST_BITS s/MiB: every float a
#: piece report can give (seconds in ns over at most 2**40 bytes, i.e. >= 2**-50 s/MiB,
#: with 53 significant bits) is a whole number of such units, so the sums are exact.
COST_BITS = 110
_COST_UNIT = float(1 << COST_BITS)


def cost_units(cost: float) -> int:
    """``cost`` as a whole number of 2**-COST_BITS units (exact for every cost a report gives)."""
    return int(cost * _COST_UNIT)


class CostStats(NamedTuple):
    """Exact sums over a window of costs, in 2**-COST_BITS units: what bad-parent detection asks."""

    #: How many costs came before the newest, their sum and sum of squares (units, units squared).
    history: int
    total: int
    squares: int
    #: The newest cost (float, as reported).
    last: float


def cost_stats(costs: Sequence[float]) -> CostStats | None:
    """The :class:`CostStats` of ``costs`` (oldest first; O(1) for a :class:`CostWindow`); None when empty."""
    if isinstance(costs, CostWindow):
        return costs.stats()
    if not costs:
        return None
    units = [cost_units(c) for c in costs[:-1]]
    return CostStats(len(units), sum(units), sum(u * u for u in units), float(costs[-1]))


class CostWindow(Sequence[float]):
    """The most recent costs, oldest first, in a fixed-size ring of C doubles.

    Statistics over the window are asked for by every decision that samples
    the peer, and in a large cluster most peers a decision samples were not
    sampled since their last change: so the sums they need are kept up to
    date on :meth:`append` (exactly, as integers: no drift however many
    costs pass through) and every question is O(1); the evaluator's verdict
    is kept in :attr:`verdict` until the next cost. A ring of doubles costs
    8 B a sample where a deque of floats cost 32.
    """

    __slots__ = ("_ring", "_start", "_maxlen", "_recent_count", "_total", "_squares", "_recent", "verdict")

    def __init__(self, costs: Iterable[float] = (), *, maxlen: int = COST_WINDOW):
        self._ring = array("d")
        self._start = 0
        self._maxlen = maxlen
        self._recent_count = min(RECENT_COSTS, maxlen)
        #: Sum and sum of squares of every cost in the window, and sum of the last RECENT_COSTS (units).
        self._total = 0
        self._squares = 0
        self._recent = 0
        #: What the evaluator concluded from these costs (bad parent or not), until the next one.
        self.verdict: bool | None = None
        self.extend(costs)

    def _at(self, index: int) -> float:
        """The ``index``-th cost, oldest first (0 <= index < len)."""
        ring = self._ring
        return ring[(self._start + index) % len(ring)] if self._start else ring[index]

    def append(self, cost: float) -> None:
        ring = self._ring
        n = len(ring)
        units = cost_units(cost)
        if n >= self._recent_count:  # the cost that drops out of the recent ones
            self._recent -= cost_units(self._at(n - self._recent_count))
        self._recent += units
        if n < self._maxlen:
            ring.append(cost)
        else:
            old = cost_units(ring[self._start])
            self._total -= old
            self._squares -= old * old
            ring[self._start] = cost
            self._start = (self._start + 1) % self._maxlen
        self._total += units
        self._squares += units * units
        self.verdict = None

    def extend(self, costs: Iterable[float]) -> None:
        for cost in costs:
            self.append(cost)

    def recent_mean(self) -> float | None:
        """Mean of the last RECENT_COSTS costs (correctly rounded), None when there are none."""
        n = min(len(self._ring), self._recent_count)
        return self._recent / (n << COST_BITS) if n else None

    def stats(self) -> CostStats | None:
        """:class:`CostStats` of the window in O(1); None when empty."""
        n = len(self._ring)
        if not n:
            return None
        last = self._at(n - 1)
        units = cost_units(last)
        return CostStats(n - 1, self._total - units, self._squares - units * units, last)

    def __len__(self) -> int:
        return len(self._ring)

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> list[float]: ...

    def __getitem__(self, index: int | slice) -> float | list[float]:
        ordered = self._ring[self._start :] + self._ring[: self._start]
        if isinstance(index, slice):
            return ordered[index].tolist()
        return ordered[index]

    def __iter__(self) -> Iterator[float]:
        return iter(self.tolist())

    def tolist(self) -> list[float]:
        """The costs, oldest first."""
        ring, start = self._ring, self._start
        return ring[start:].tolist() + ring[:start].tolist() if start else ring.tolist()

    def __repr__(self) -> str:
        return f"CostWindow({list(self)!r})"


class PeerPool:
    """A set of peers with O(1) add, discard and membership, and O(k) random samples.

    ``random.sample`` needs a sequence; a list with each peer's position
    (removal moves the last peer into the hole) gives one without copying.
    """

    __slots__ = ("_peers", "_position")

    def __init__(self) -> None:
        self._peers: list[Peer] = []
        self._position: dict[Peer, int] = {}

    def add(self, peer: Peer) -> bool:
        """Add ``peer``; True when it was not in the pool."""
        if peer in self._position:
            return False
        self._position[peer] = len(self._peers)
        self._peers.append(peer)
        return True

    def discard(self, peer: Peer) -> bool:
        """Remove ``peer``; True when it was in the pool."""
        index = self._position.pop(peer, None)
        if index is None:
            return False
        last = self._peers.pop()
        if last is not peer:
            self._peers[index] = last
            self._position[last] = index
        return True

    def __contains__(self, peer: object) -> bool:
        return peer in self._position

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers)

    def sample(self, k: int, rng: random.Random) -> list[Peer]:
        """``k`` distinct peers at random (all of them, in pool order, when there are not more)."""
        if k >= len(self._peers):
            return list(self._peers)
        return rng.sample(self._peers, k)


@attrs.define(eq=False, repr=False)
class Host:
    id: str
    created_at: float
    announced_at: float
    #: Seconds of silence after which the host is dropped.
    ttl: float
    type: HostType = HostType.NORMAL
    hostname: str = ""
    ip: str = ""
    #: gRPC port (DfdaemonUpload: SyncPieces, DownloadPiece, seed triggers).
    port: int = 0
    #: HTTP data-plane port that serves piece bytes.
    download_port: int = 0
    idc: str = ""
    location: str = ""
    labels: dict[str, str] = attrs.Factory(dict)
    os: str = ""
    version: str = ""
    disable_shared: bool = False
    #: Children that may download from this host's peers at once.
    upload_slots: int = 50
    #: Pieces children got from this host, and failures they reported.
    upload_count: int = 0
    upload_failed_count: int = 0
    #: Origin pieces this host reported with a digest that contradicts the anchored one:
    #: such a host is not offered as a parent (its bytes are not what entered the cluster).
    suspect_reports: int = 0
    #: Reporter host id -> when it could not reach this host (since its last announce): enough
    #: distinct reporters and the host counts as gone until it announces again.
    unreachable_reporters: dict[str, float] = attrs.Factory(dict)
    peers: dict[str, Peer] = attrs.Factory(dict)
    #: Edges from this host's peers to their children (kept by the graph; the
    #: sum of ``len(p.children)`` over ``peers``, without the walk).
    upload_used: int = 0
    #: Announcements that changed what the host says (its message is rebuilt only then).
    generation: int = 0

    @property
    def is_seed(self) -> bool:
        return self.type is HostType.SEED

    @property
    def free_upload_slots(self) -> int:
        return self.upload_slots - self.upload_used

    @property
    def reported_unreachable(self) -> bool:
        """Enough other hosts could not reach it since it last announced (see ``Graph.piece_failed``)."""
        return len(self.unreachable_reporters) >= UNREACHABLE_REPORTERS

    @property
    def effective_idc(self) -> str:
        return self.idc or self.labels.get("idc", "")

    @property
    def effective_location(self) -> str:
        return self.location or self.labels.get("location", "")

    def __repr__(self) -> str:
        return f"Host({self.id!r}, {self.type.value}, {self.ip}:{self.port})"


@attrs.define(eq=False, repr=False)
class Task:
    id: str
    created_at: float
    updated_at: float
    url: str = ""
    tag: str = ""
    application: str = ""
    #: common.TaskType value (0 standard, 1 persistent: no origin to fall back to).
    type: int = 0
    digest: str | None = None
    filtered_query_params: tuple[str, ...] = ()
    request_header: dict[str, str] = attrs.Factory(dict)
    piece_length: int | None = None
    content_length: int | None = None
    piece_count: int | None = None
    #: The origin's validators for the content peers hold (from a finished peer's report).
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    #: By id; add and remove peers with :meth:`add` and :meth:`remove` only, which keep the indexes.
    peers: dict[str, Peer] = attrs.Factory(dict)
    #: Seed host id -> when its seed peer of this task failed (the trigger refused, the seed's
    #: stream gone mid-download): the policy triggers another seed host meanwhile.
    failed_seed_hosts: dict[str, float] = attrs.Factory(dict)
    #: How many times a seed was triggered for the task (names placeholders).
    seed_triggers: int = 0
    #: piece number -> "blake3:<hex>", fixed by the first peer that reported the piece from the
    #: origin: children check parents' bytes against these (GetPieceDigests).
    piece_digests: dict[int, str] = attrs.Factory(dict)
    #: Back-to-source reports whose digest contradicted the anchored one.
    digest_conflicts: int = 0
    #: Peers of the task in each state.
    state_counts: dict[PeerState, int] = attrs.Factory(lambda: dict.fromkeys(PeerState, 0))
    #: Peers that may serve others: in a parent state, on a sharing host, and
    #: holding a piece or being a seed that fetches from the origin.  Every
    #: other peer is excluded by the evaluator's state, not_shared or useless
    #: filter, so parents are sampled from here.
    servers: PeerPool = attrs.Factory(PeerPool)
    #: Active peers fetching from the origin (told to by us, or on their own), seeds included.
    sourcing: set[Peer] = attrs.Factory(set)
    #: Peers on seed hosts.
    seeds: set[Peer] = attrs.Factory(set)

    # ---- indexes ------------------------------------------------------------

    def add(self, peer: Peer) -> None:
        self.peers[peer.id] = peer
        if not peer.indexed:
            peer.indexed = True
            self.state_counts[peer.state] += 1
            self.reindex(peer)

    def remove(self, peer: Peer) -> None:
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]
        if peer.indexed:
            peer.indexed = False
            self.state_counts[peer.state] -= 1
            self.servers.discard(peer)
            self.sourcing.discard(peer)
            self.seeds.discard(peer)

    def _state_changed(self, peer: Peer, old: PeerState) -> None:
        self.state_counts[old] -= 1
        self.state_counts[peer.state] += 1
        self.reindex(peer)

    def reindex(self, peer: Peer) -> None:
        """Put ``peer`` in the indexes its fields say it belongs to (after a change)."""
        if not peer.indexed:
            return
        state, host = peer.state, peer.host
        if (
            state in PARENT_STATES
            and not host.disable_shared
            and (peer.finished_count > 0 or (host.type is HostType.SEED and state in FEEDING_STATES))
        ):
            self.servers.add(peer)
        else:
            self.servers.discard(peer)
        if state in ACTIVE_STATES and (peer.need_back_to_source or state is PeerState.BACK_TO_SOURCE):
            self.sourcing.add(peer)
        else:
            self.sourcing.discard(peer)
        if host.type is HostType.SEED:
            self.seeds.add(peer)
        else:
            self.seeds.discard(peer)

    # ---- questions decisions ask -------------------------------------------

    @property
    def state(self) -> TaskState:
        counts = self.state_counts
        if counts[PeerState.SUCCEEDED]:
            return TaskState.SUCCEEDED
        if any(counts[s] for s in ACTIVE_STATES):
            return TaskState.RUNNING
        if counts[PeerState.FAILED]:
            return TaskState.FAILED
        return TaskState.PENDING

    @property
    def is_empty(self) -> bool:
        """Known to have no content (a peer finished it with length 0)."""
        return self.content_length == 0

    def back_to_source_count(self, *, include_seeds: bool = False, exclude: Peer | None = None) -> int:
        """Active peers fetching from the origin (told to by us, or on their own)."""
        return sum(1 for p in self.sourcing if p is not exclude and (include_seeds or not p.host.is_seed))

    def seed_peers(self) -> list[Peer]:
        return list(self.seeds)

    def has_live_peer_off(self, host: Host) -> bool:
        """Whether a live peer of the task is on another host than ``host``."""
        live = sum(self.state_counts[s] for s in LIVE_STATES)
        here = sum(1 for p in host.peers.values() if p.task is self and p.state in LIVE_STATES)
        return live > here

    def has_available_peer(self) -> bool:
        """Some peer holds pieces for others (a succeeded one, or a live one with pieces)."""
        return bool(self.state_counts[PeerState.SUCCEEDED]) or any(p.finished_count for p in self.servers)

    def __repr__(self) -> str:
        return f"Task({self.id!r}, {self.state.value}, peers={len(self.peers)})"


@attrs.define(eq=False, repr=False)
class Peer:
    id: str
    host: Host
    task: Task
    created_at: float
    updated_at: float
    _state: PeerState = PeerState.PENDING
    #: common.Priority value.
    priority: int = 0
    #: Bit n set = piece n is here.
    pieces: int = 0
    finished_count: int = 0
    #: Cost (seconds) of each finished piece, indexed by piece number (0 = unknown).
    piece_costs: array[float] = attrs.Factory(lambda: array("f"))
    #: Seconds/MiB of the most recent pieces children fetched from this peer.
    upload_costs: CostWindow = attrs.Factory(CostWindow)
    #: Parents in use (edges parent -> self), by peer id.
    parents: dict[str, Peer] = attrs.Factory(dict)
    #: Children downloading from this peer (edges self -> child), by peer id.
    children: dict[str, Peer] = attrs.Factory(dict)
    #: Parents (peer ids) this peer must not be offered again.
    blocked_parents: set[str] = attrs.Factory(set)
    #: The scheduler told this peer to go to the origin (counts against the task's limit).
    _need_back_to_source: bool = False
    #: From the download request: never / immediately go to the origin.
    disable_back_to_source: bool = False
    requested_back_to_source: bool = False
    #: Other ids this peer is known by (a triggered placeholder's id after adoption).
    aliases: set[str] = attrs.Factory(set)
    finished_at: float | None = None
    #: In its task's indexes (between ``Task.add`` and ``Task.remove``).
    indexed: bool = attrs.field(default=False, init=False)

    @property
    def state(self) -> PeerState:
        return self._state

    @state.setter
    def state(self, value: PeerState) -> None:
        old, self._state = self._state, value
        if self.indexed and old is not value:
            self.task._state_changed(self, old)

    @property
    def need_back_to_source(self) -> bool:
        return self._need_back_to_source

    @need_back_to_source.setter
    def need_back_to_source(self, value: bool) -> None:
        self._need_back_to_source = value
        self.task.reindex(self)

    def has_piece(self, number: int) -> bool:
        return bool(self.pieces >> number & 1)

    def piece_numbers(self) -> Iterator[int]:
        return set_bits(self.pieces)

    def has_pieces_missing_from(self, other: Peer) -> bool:
        """True when this peer holds a piece ``other`` lacks."""
        return bool(self.pieces & ~other.pieces)

    @property
    def is_complete(self) -> bool:
        return self.state is PeerState.SUCCEEDED

    @property
    def is_feeding_seed(self) -> bool:
        """A seed fetching the task from the origin: useful before it has pieces."""
        return self.host.type is HostType.SEED and self._state in FEEDING_STATES

    def __repr__(self) -> str:
        return f"Peer({self.id!r}, {self.state.value}, host={self.host.id!r}, pieces={self.finished_count})"


@attrs.frozen
class Offer:
    """A change that may let up to ``budget`` waiting peers of ``task`` be answered.

    ``server``: the peer that can now serve (a new piece, a freed upload slot,
    a seed starting), to be tried by the woken decisions; a waiter it cannot
    help (same host, blocked, holds nothing it lacks) is not woken for it,
    nor, with ``piece`` (the server's newest), one it could help before.  No server: the policy's inputs changed (a peer
    gone, a seed host appeared), any waiter may be woken.  ``task`` None:
    ``budget`` waiters of every task.
    """

    task: Task | None
    budget: int
    server: Peer | None = None
    piece: int | None = None


@attrs.frozen
class GcReport:
    """What one GC pass removed or changed, for logs and for waking waiters."""

    hosts: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    #: Triggered seed placeholders given up on (the seed never registered).
    expired_triggers: tuple[str, ...] = ()
    #: Tasks whose peers changed (waiters should re-evaluate).
    touched_tasks: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.hosts or self.peers or self.tasks or self.expired_triggers)


def _said(host: Host) -> tuple[Any, ...]:
    """What a host's announcement states, besides its type and sharing (compared on every announce)."""
    return (
        host.hostname,
        host.ip,
        host.port,
        host.download_port,
        host.idc,
        host.location,
        host.labels,
        host.os,
        host.version,
    )


def cost_per_mib(cost: float, length: int) -> float:
    """Seconds per MiB; the raw seconds when the length is unknown."""
    return cost * MiB / length if length > 0 else cost


class Graph:
    """Hosts, tasks and peers with the operations the scheduler service needs.

    Every mutating method raises :mod:`dffs.scheduler.errors` exceptions for
    bad input and leaves the graph unchanged when it does.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        peer_ttl: float = 24 * 3600.0,
        task_ttl: float = 24 * 3600.0,
        host_ttl: float = 300.0,
        host_ttl_intervals: float = 3.0,
        failed_peer_ttl: float = 60.0,
        seed_trigger_timeout: float = 30.0,
        upload_slots: int = 50,
        seed_upload_slots: int = 200,
        max_piece_count: int = 1 << 17,
        collect_offers: bool = False,
    ):
        self.clock = clock
        self.peer_ttl = peer_ttl
        self.task_ttl = task_ttl
        self.host_ttl = host_ttl
        self.host_ttl_intervals = host_ttl_intervals
        self.failed_peer_ttl = failed_peer_ttl
        self.seed_trigger_timeout = seed_trigger_timeout
        self.upload_slots = upload_slots
        self.seed_upload_slots = seed_upload_slots
        self.max_piece_count = max_piece_count
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, Task] = {}
        self.peers: dict[str, Peer] = {}
        #: Old peer id -> current peer id (adopted placeholders).
        self.aliases: dict[str, str] = {}
        #: The seed hosts among ``hosts``.
        self.seeds: dict[str, Host] = {}
        #: Changes that may help waiting peers, since the last :meth:`take_offers` (with ``collect_offers``).
        self.collect_offers = collect_offers
        self.offers: list[Offer] = []
        #: Whether a task has anyone an offer could wake (the waiting room's answer): an offer for
        #: a task nobody waits on would wake nobody, so it is not even noted.
        self.offer_wanted: Callable[[Task], bool] = lambda task: True

    # ---- lookups ----------------------------------------------------------

    def host(self, host_id: str) -> Host:
        try:
            return self.hosts[host_id]
        except KeyError:
            raise NotFound(f"host {host_id!r} not found (announce it first)") from None

    def task(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise NotFound(f"task {task_id!r} not found") from None

    def find_peer(self, peer_id: str) -> Peer | None:
        peer = self.peers.get(peer_id)
        if peer is None and peer_id in self.aliases:
            peer = self.peers.get(self.aliases[peer_id])
        return peer

    def peer(self, peer_id: str) -> Peer:
        peer = self.find_peer(peer_id)
        if peer is None:
            raise NotFound(f"peer {peer_id!r} not found")
        return peer

    def seed_hosts(self) -> list[Host]:
        return list(self.seeds.values())

    # ---- offers -----------------------------------------------------------

    def take_offers(self) -> list[Offer]:
        offers, self.offers = self.offers, []
        return offers

    def _offer(self, task: Task | None, budget: int, server: Peer | None = None, piece: int | None = None) -> None:
        if self.collect_offers and budget > 0 and (task is None or self.offer_wanted(task)):
            self.offers.append(Offer(task, budget, server, piece))

    def _offer_server(self, peer: Peer, was_server: bool) -> None:
        """Offer ``peer``'s free upload slots to its task's waiters if it has just become able to serve."""
        if not was_server and peer in peer.task.servers:
            self._offer(peer.task, peer.host.free_upload_slots, peer)

    # ---- edges ------------------------------------------------------------

    def _link(self, parent: Peer, child: Peer) -> None:
        if child.id in parent.children:
            return
        parent.children[child.id] = child
        child.parents[parent.id] = parent
        parent.host.upload_used += 1

    def _unlink(self, parent: Peer, child: Peer) -> None:
        """Drop the edge; the slot it frees is offered to the parent's task's waiters."""
        if parent.children.pop(child.id, None) is None:
            return
        parent.host.upload_used -= 1
        if parent in parent.task.servers:
            self._offer(parent.task, 1, parent)

    # ---- hosts ------------------------------------------------------------

    def announce_host(
        self,
        host_id: str,
        *,
        type: HostType = HostType.NORMAL,
        hostname: str = "",
        ip: str = "",
        port: int = 0,
        download_port: int = 0,
        idc: str = "",
        location: str = "",
        labels: Mapping[str, str] | None = None,
        os: str = "",
        version: str = "",
        disable_shared: bool = False,
        interval: float | None = None,
    ) -> tuple[Host, bool]:
        """Register or refresh a host; returns (host, is_new).

        A host that states its announce ``interval`` is dropped after
        ``host_ttl_intervals`` silent intervals; one that does not, after
        ``host_ttl``.  Upload slots default per host type; a label
        ``upload_slots`` overrides them.
        """
        if not host_id:
            raise InvalidArgument("host id is empty")
        labels = dict(labels or {})
        slots = self.seed_upload_slots if type is HostType.SEED else self.upload_slots
        if "upload_slots" in labels:
            try:
                slots = int(labels["upload_slots"])
            except ValueError:
                raise InvalidArgument(
                    f"host {host_id!r}: label upload_slots={labels['upload_slots']!r} is not an integer"
                ) from None
            if not 0 <= slots <= 100_000:
                raise InvalidArgument(f"host {host_id!r}: upload_slots {slots} out of range")
        ttl = self.host_ttl_intervals * interval if interval and interval > 0 else self.host_ttl
        now = self.clock()
        host = self.hosts.get(host_id)
        is_new = host is None
        changed = False
        if host is None:
            host = self.hosts[host_id] = Host(id=host_id, created_at=now, announced_at=now, ttl=ttl)
        host.announced_at = now
        if host.unreachable_reporters:
            host.unreachable_reporters.clear()  # it speaks: whatever others saw, it is back
            changed = True
        host.ttl = ttl
        changed = changed or host.type is not type or host.disable_shared != disable_shared
        said = (hostname, ip, port, download_port, idc, location, labels, os, version)
        if is_new or changed or said != _said(host):
            host.generation += 1
        host.type = type
        host.hostname = hostname
        host.ip = ip
        host.port = port
        host.download_port = download_port
        host.idc = idc
        host.location = location
        host.labels = labels
        host.os = os
        host.version = version
        host.disable_shared = disable_shared
        host.upload_slots = slots
        if type is HostType.SEED:
            if host_id not in self.seeds:
                self._offer(None, 1)  # a seed to trigger for every waiting task
            self.seeds[host_id] = host
        else:
            self.seeds.pop(host_id, None)
        if changed:
            for peer in list(host.peers.values()):
                was_server = peer in peer.task.servers
                peer.task.reindex(peer)
                self._offer_server(peer, was_server)
        return host, is_new

    def delete_host(self, host_id: str) -> list[Peer]:
        """Drop a host and every peer on it; returns the peers removed."""
        host = self.host(host_id)
        removed = list(host.peers.values())
        for peer in removed:
            self._remove_peer(peer)
        del self.hosts[host_id]
        self.seeds.pop(host_id, None)
        return removed

    # ---- peers ------------------------------------------------------------

    def register_peer(
        self,
        peer_id: str,
        host_id: str,
        task_id: str,
        *,
        url: str = "",
        tag: str = "",
        application: str = "",
        task_type: int = 0,
        digest: str | None = None,
        filtered_query_params: Iterable[str] = (),
        request_header: Mapping[str, str] | None = None,
        piece_length: int | None = None,
        priority: int = 0,
        disable_back_to_source: bool = False,
        need_back_to_source: bool = False,
    ) -> Peer:
        """Create a peer (and its task on first sight).

        A registration on a host that holds a TRIGGERED placeholder for the
        task adopts the placeholder: same object, new id, old id kept as an
        alias, so children already told about it keep working.
        """
        for name, value in (("peer", peer_id), ("host", host_id), ("task", task_id)):
            if not value:
                raise InvalidArgument(f"{name} id is empty")
        if self.find_peer(peer_id) is not None:
            raise AlreadyExists(f"peer {peer_id!r} is already registered")
        host = self.host(host_id)
        if piece_length is not None and not 0 < piece_length <= 1 << 40:
            raise InvalidArgument(f"piece length {piece_length} out of range")
        task = self.tasks.get(task_id)
        if task is not None and piece_length and task.piece_length and piece_length != task.piece_length:
            raise InvalidArgument(
                f"task {task_id!r}: piece length {piece_length} differs from the task's {task.piece_length}"
            )
        now = self.clock()
        if task is None:
            task = self.tasks[task_id] = Task(id=task_id, created_at=now, updated_at=now)
        task.updated_at = now
        # The latest URL wins: signed URLs of one task differ and expire.
        task.url = url or task.url
        task.tag = tag
        task.application = application
        task.type = task_type
        task.digest = digest if digest is not None else task.digest
        task.filtered_query_params = tuple(filtered_query_params)
        task.request_header = dict(request_header or {})
        if piece_length:
            task.piece_length = piece_length

        placeholder = next((p for p in host.peers.values() if p.task is task and p.state is PeerState.TRIGGERED), None)
        if placeholder is not None:
            placeholder.state = next_state(placeholder.state, "adopt")
            old_id = placeholder.id
            del self.peers[old_id], host.peers[old_id], task.peers[old_id]
            placeholder.id = peer_id
            placeholder.aliases.add(old_id)
            self.aliases[old_id] = peer_id
            # Edges are keyed by peer id on both ends: re-key them under the new id.
            for child in placeholder.children.values():
                child.parents.pop(old_id, None)
                child.parents[peer_id] = placeholder
            for parent in placeholder.parents.values():
                parent.children.pop(old_id, None)
                parent.children[peer_id] = placeholder
            peer = placeholder
            peer.updated_at = now
        else:
            peer = Peer(id=peer_id, host=host, task=task, created_at=now, updated_at=now)
        peer.priority = priority
        peer.disable_back_to_source = disable_back_to_source
        peer.requested_back_to_source = need_back_to_source
        self.peers[peer_id] = host.peers[peer_id] = peer
        task.add(peer)
        return peer

    def add_triggered_seed(self, task: Task, host: Host) -> Peer:
        """A TRIGGERED placeholder for ``task`` on the seed ``host``."""
        if not host.is_seed:
            raise InvalidArgument(f"host {host.id!r} is not a seed")
        task.seed_triggers += 1
        peer_id = f"seed-{task.seed_triggers}-{host.id}-{task.id}"
        while self.find_peer(peer_id) is not None:  # an adopted placeholder keeps its old id as alias
            task.seed_triggers += 1
            peer_id = f"seed-{task.seed_triggers}-{host.id}-{task.id}"
        now = self.clock()
        peer = Peer(
            id=peer_id,
            host=host,
            task=task,
            created_at=now,
            updated_at=now,
            state=PeerState.TRIGGERED,
            need_back_to_source=True,
        )
        self.peers[peer_id] = host.peers[peer_id] = peer
        task.add(peer)
        task.updated_at = now
        self._offer_server(peer, False)
        return peer

    def _touch(self, peer: Peer) -> float:
        now = self.clock()
        peer.updated_at = now
        peer.task.updated_at = now
        return now

    def _transition(self, peer: Peer, event: str) -> None:
        was_server = peer in peer.task.servers
        peer.state = next_state(peer.state, event)
        self._touch(peer)
        self._offer_server(peer, was_server)

    def peer_started(self, peer: Peer) -> None:
        self._transition(peer, "start")

    def peer_back_to_source_started(self, peer: Peer) -> None:
        self._transition(peer, "back_to_source")
        self.clear_parents(peer)

    def set_parents(self, peer: Peer, parents: Iterable[Peer]) -> None:
        """Replace the peer's parents in use (edges) with ``parents``."""
        parents = [p for p in parents if p is not peer]
        keep = {id(p) for p in parents}
        for old in list(peer.parents.values()):
            if id(old) not in keep:
                self._unlink(old, peer)
        peer.parents.clear()
        for parent in parents:
            self._link(parent, peer)
            peer.parents[parent.id] = parent
        self._touch(peer)

    def clear_parents(self, peer: Peer) -> None:
        for parent in list(peer.parents.values()):
            self._unlink(parent, peer)
        peer.parents.clear()

    def block_parents(self, peer: Peer, parent_ids: Iterable[str]) -> None:
        """Never offer these parents to ``peer`` again (ids or aliases)."""
        for parent_id in parent_ids:
            if not parent_id:
                continue
            peer.blocked_parents.add(parent_id)
            parent = self.find_peer(parent_id)
            if parent is not None:
                peer.blocked_parents.add(parent.id)
                peer.blocked_parents.update(parent.aliases)
                if peer.parents.pop(parent.id, None) is not None:
                    self._unlink(parent, peer)
        self._touch(peer)

    def check_piece_number(self, task: Task, number: int) -> None:
        if number < 0 or number >= self.max_piece_count:
            raise InvalidArgument(f"piece number {number} out of range (max {self.max_piece_count - 1})")
        if task.piece_count is not None and number >= task.piece_count:
            raise InvalidArgument(f"piece number {number} beyond the task's {task.piece_count} pieces")

    def piece_finished(
        self,
        peer: Peer,
        number: int,
        *,
        parent_id: str | None = None,
        cost: float = 0.0,
        length: int = 0,
        offset: int | None = None,
    ) -> Peer | None:
        """Record a piece; ``parent_id`` None means it came from the origin.

        Returns the parent peer when it is known (a parent may have been
        forgotten meanwhile; the piece still counts).
        """
        task = peer.task
        self.check_piece_number(task, number)
        if not (cost >= 0 and math.isfinite(cost)):
            raise InvalidArgument(f"piece {number}: bad cost {cost}")
        if length < 0 or length > 1 << 40:
            raise InvalidArgument(f"piece {number}: bad length {length}")
        if offset is not None and task.piece_length and length and offset != number * task.piece_length:
            raise InvalidArgument(f"piece {number}: offset {offset} is not number x piece length {task.piece_length}")
        parent: Peer | None = None
        if parent_id is not None:
            parent = self.find_peer(parent_id)
            if parent is peer:
                raise InvalidArgument(f"piece {number}: peer names itself as the parent")
        if peer.state is PeerState.PENDING:
            self._transition(peer, "start" if parent_id is not None else "back_to_source")
        elif peer.state not in (PeerState.RUNNING, PeerState.BACK_TO_SOURCE):
            raise FailedPrecondition(f"peer in state {peer.state.value} cannot report pieces")
        now = self._touch(peer)
        if offset and number > 0 and not task.piece_length and offset % number == 0:
            task.piece_length = offset // number  # learned from the first piece past 0
        if not peer.has_piece(number):
            peer.pieces |= 1 << number
            peer.finished_count += 1
            if peer.finished_count == 1:
                was_server = peer in task.servers
                task.reindex(peer)
                self._offer_server(peer, was_server)
            elif peer.host.free_upload_slots > 0 and peer in task.servers:
                self._offer(task, 1, peer, number)  # for a waiter this piece makes it useful to
        if len(peer.piece_costs) <= number:
            peer.piece_costs.extend([0.0] * (number + 1 - len(peer.piece_costs)))
        peer.piece_costs[number] = cost
        if parent is not None:
            parent.upload_costs.append(cost_per_mib(cost, length))
            parent.host.upload_count += 1
            parent.updated_at = now
        return parent

    def anchor_piece_digest(self, peer: Peer, number: int, digest: str) -> bool:
        """Keep ``digest`` for piece ``number`` if it is the first report of it from the origin;
        False when it contradicts the anchored one (the reporter's host becomes suspect)."""
        task = peer.task
        self.check_piece_number(task, number)
        known = task.piece_digests.setdefault(number, digest)
        if known == digest:
            return True
        task.digest_conflicts += 1
        peer.host.suspect_reports += 1
        return False

    def piece_failed(
        self, peer: Peer, number: int, *, parent_id: str, temporary: bool, unreachable: bool = False
    ) -> Peer | None:
        """A child could not get a piece from ``parent_id``.

        A permanent failure (bad digest, parent gone) blocks that parent for
        this peer; a temporary one only counts against the parent's host.
        ``unreachable`` (no connection): once ``UNREACHABLE_REPORTERS``
        distinct hosts said so since the parent's host last announced, that
        host counts as gone — no parent, no live seed — until it announces
        again (a dead host is otherwise live until its TTL).
        """
        self.check_piece_number(peer.task, number)
        if peer.state not in ACTIVE_STATES:
            raise FailedPrecondition(f"peer in state {peer.state.value} cannot report pieces")
        self._touch(peer)
        parent = self.find_peer(parent_id) if parent_id else None
        if parent is peer:
            raise InvalidArgument(f"piece {number}: peer names itself as the parent")
        if parent is not None:
            parent.host.upload_failed_count += 1
            if unreachable and parent.host is not peer.host:
                reporters = parent.host.unreachable_reporters
                newly = peer.host.id not in reporters and len(reporters) + 1 == UNREACHABLE_REPORTERS
                reporters[peer.host.id] = self.clock()
                if newly:
                    self._offer(parent.task, 1)  # no live seed any more: a waiter may trigger another
        if not temporary and parent_id:
            self.block_parents(peer, [parent_id])
        return parent

    def _check_totals(self, task: Task, content_length: int, piece_count: int) -> None:
        if content_length < 0 or content_length > 1 << 50:
            raise InvalidArgument(f"content length {content_length} out of range")
        if piece_count < 0 or piece_count > self.max_piece_count:
            raise InvalidArgument(f"piece count {piece_count} out of range")
        if (content_length == 0) != (piece_count == 0):
            raise InvalidArgument(f"content length {content_length} with {piece_count} pieces")
        if task.piece_length and piece_count != -(-content_length // task.piece_length):
            raise InvalidArgument(
                f"{piece_count} pieces do not match {content_length} bytes at piece length {task.piece_length}"
            )
        if task.content_length is not None and task.content_length != content_length:
            raise InvalidArgument(f"content length {content_length} differs from the task's {task.content_length}")
        if task.piece_count is not None:
            if task.piece_count != piece_count:
                raise InvalidArgument(f"piece count {piece_count} differs from the task's {task.piece_count}")
            return  # every piece number reported since was checked against the count
        top = max((p.pieces.bit_length() for p in task.peers.values()), default=0)  # once per task
        if top > piece_count:
            raise InvalidArgument(f"piece count {piece_count} but piece {top - 1} was reported")

    def peer_finished(self, peer: Peer, *, content_length: int, piece_count: int) -> None:
        """The peer holds the whole task; its totals become the task's."""
        task = peer.task
        next_state(peer.state, "finish")  # validate before changing anything
        self._check_totals(task, content_length, piece_count)
        task.content_length = content_length
        task.piece_count = piece_count
        peer.pieces = (1 << piece_count) - 1
        peer.finished_count = piece_count
        self._transition(peer, "finish")
        peer.finished_at = peer.updated_at
        peer.need_back_to_source = False
        self.clear_parents(peer)
        if peer in task.servers:  # it now holds every piece: anyone lacking one may use it
            self._offer(task, peer.host.free_upload_slots, peer)

    def peer_failed(self, peer: Peer) -> None:
        self._transition(peer, "fail")
        self.clear_parents(peer)
        self._drop_children(peer)
        if peer.state is PeerState.FAILED and peer.host.is_seed:
            peer.task.failed_seed_hosts[peer.host.id] = self.clock()
        self._offer(peer.task, 1)  # one fewer on the origin, or no seed any more: the policy may answer now

    def _drop_children(self, peer: Peer) -> None:
        for child in peer.children.values():
            child.parents.pop(peer.id, None)
        peer.host.upload_used -= len(peer.children)
        peer.children.clear()

    def leave_peer(self, peer: Peer) -> None:
        """The peer is gone (DeletePeer, DeleteTask, stream gone before it started)."""
        peer.state = next_state(peer.state, "leave")
        self._remove_peer(peer)

    def _remove_peer(self, peer: Peer) -> None:
        self.clear_parents(peer)
        self._drop_children(peer)
        self.peers.pop(peer.id, None)
        peer.host.peers.pop(peer.id, None)
        peer.task.remove(peer)
        for alias in peer.aliases:
            self.aliases.pop(alias, None)
        peer.task.updated_at = self.clock()
        self._offer(peer.task, 1)

    def delete_task_from_host(self, host_id: str, task_id: str) -> list[Peer]:
        """The host no longer holds the task: its peers of the task leave."""
        host = self.host(host_id)
        task = self.task(task_id)
        peers = [p for p in host.peers.values() if p.task is task]
        if not peers:
            raise NotFound(f"host {host_id!r} holds no peer of task {task_id!r}")
        for peer in peers:
            self.leave_peer(peer)
        return peers

    def delete_pieces(self, host_id: str, task_id: str, numbers: Iterable[int]) -> list[Peer]:
        """The host evicted these pieces (its cache GC): its peers of the task no longer hold them.

        The peers keep their state (a succeeded peer still serves what it has;
        children learn the exact set from its SyncPieces), but parent choice
        uses the piece bitmap, so nobody is sent here for pieces it lacks. A
        peer left holding nothing leaves the task.
        """
        host = self.host(host_id)
        task = self.task(task_id)
        numbers = list(numbers)
        for number in numbers:
            self.check_piece_number(task, number)
        peers = [p for p in host.peers.values() if p.task is task]
        if not peers:
            raise NotFound(f"host {host_id!r} holds no peer of task {task_id!r}")
        mask = 0
        for number in numbers:
            mask |= 1 << number
        for peer in peers:
            removed = peer.pieces & mask
            if removed:
                peer.pieces &= ~mask
                peer.finished_count -= removed.bit_count()
                task.reindex(peer)
                self._touch(peer)
            if not peer.pieces and peer.state is PeerState.SUCCEEDED:
                self.leave_peer(peer)
        task.updated_at = self.clock()
        return peers

    # ---- GC ---------------------------------------------------------------

    def gc(self) -> GcReport:
        """Drop silent hosts (with their peers), expired peers and idle tasks.

        * a host silent for longer than its TTL goes, with its peers;
        * a TRIGGERED placeholder older than ``seed_trigger_timeout`` fails
          (the seed never registered), and the task remembers the failure;
        * a FAILED peer goes ``failed_peer_ttl`` after its last update,
          any peer ``peer_ttl`` after its last update;
        * a task with no peers goes ``task_ttl`` after its last update.
        """
        now = self.clock()
        touched: set[str] = set()
        hosts, peers, tasks, expired = [], [], [], []
        for host in list(self.hosts.values()):
            if now - host.announced_at > host.ttl:
                for peer in self.delete_host(host.id):
                    peers.append(peer.id)
                    touched.add(peer.task.id)
                hosts.append(host.id)
        for peer in list(self.peers.values()):
            age = now - peer.updated_at
            if peer.state is PeerState.TRIGGERED and age > self.seed_trigger_timeout:
                self.peer_failed(peer)
                expired.append(peer.id)
                touched.add(peer.task.id)
                continue
            ttl = self.failed_peer_ttl if peer.state is PeerState.FAILED else self.peer_ttl
            if age > ttl:
                self._remove_peer(peer)
                peers.append(peer.id)
                touched.add(peer.task.id)
        for task in list(self.tasks.values()):
            if not task.peers and now - task.updated_at > self.task_ttl:
                del self.tasks[task.id]
                tasks.append(task.id)
        return GcReport(
            hosts=tuple(hosts),
            peers=tuple(peers),
            tasks=tuple(tasks),
            expired_triggers=tuple(expired),
            touched_tasks=frozenset(touched),
        )

    def stats(self) -> dict[str, Any]:
        return {"hosts": len(self.hosts), "tasks": len(self.tasks), "peers": len(self.peers)}

    def index_problems(self) -> list[str]:
        """Every index recomputed the slow way and compared (for tests): what disagrees."""
        problems = []
        for host in self.hosts.values():
            used = sum(len(p.children) for p in host.peers.values())
            if host.upload_used != used:
                problems.append(f"{host!r}: upload_used {host.upload_used}, edges {used}")
            if host.is_seed != (self.seeds.get(host.id) is host):
                problems.append(f"{host!r}: seed index")
        if set(self.seeds) - set(self.hosts):
            problems.append(f"seed index holds unknown hosts {set(self.seeds) - set(self.hosts)}")
        for task in self.tasks.values():
            peers = list(task.peers.values())
            counts = dict.fromkeys(PeerState, 0)
            for p in peers:
                counts[p.state] += 1
                if not p.indexed:
                    problems.append(f"{p!r} not indexed")
            if counts != task.state_counts:
                problems.append(f"{task!r}: state counts {task.state_counts} != {counts}")
            servers = {
                p
                for p in peers
                if p.state in PARENT_STATES
                and not p.host.disable_shared
                and (p.finished_count > 0 or p.is_feeding_seed)
            }
            if servers != set(task.servers) or len(task.servers) != len(servers):
                problems.append(f"{task!r}: servers {set(task.servers)} != {servers}")
            sourcing = {
                p
                for p in peers
                if p.state in ACTIVE_STATES and (p.need_back_to_source or p.state is PeerState.BACK_TO_SOURCE)
            }
            if sourcing != task.sourcing:
                problems.append(f"{task!r}: sourcing {task.sourcing} != {sourcing}")
            if {p for p in peers if p.host.is_seed} != task.seeds:
                problems.append(f"{task!r}: seed peers")
            for p in peers:
                if p.finished_count != p.pieces.bit_count():
                    problems.append(f"{p!r}: finished_count {p.finished_count} != {p.pieces.bit_count()} pieces")
                for c in p.children.values():
                    if c.parents.get(p.id) is not p:
                        problems.append(f"edge {p.id} -> {c.id} has no reverse")
        return problems
