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
"""

from __future__ import annotations

import enum
import math
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from dffs.scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MiB = 1024 * 1024

#: Recent piece costs kept per peer for bad-parent detection and scoring.
COST_WINDOW = 64


class HostType(enum.Enum):
    NORMAL = "normal"
    SEED = "seed"


class PeerState(enum.Enum):
    TRIGGERED = "triggered"
    PENDING = "pending"
    RUNNING = "running"
    BACK_TO_SOURCE = "back_to_source"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LEAVING = "leaving"


#: Peers still downloading (or about to): they hold edges to parents.
ACTIVE_STATES = frozenset({PeerState.TRIGGERED, PeerState.PENDING, PeerState.RUNNING, PeerState.BACK_TO_SOURCE})
#: Peers that have, or will soon have, pieces for others.
LIVE_STATES = ACTIVE_STATES | {PeerState.SUCCEEDED}

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
    peers: dict[str, Peer] = attrs.Factory(dict)

    @property
    def is_seed(self) -> bool:
        return self.type is HostType.SEED

    @property
    def upload_used(self) -> int:
        return sum(len(p.children) for p in self.peers.values())

    @property
    def free_upload_slots(self) -> int:
        return self.upload_slots - self.upload_used

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
    peers: dict[str, Peer] = attrs.Factory(dict)
    #: When the last attempt to trigger a seed for this task failed.
    seed_trigger_failed_at: float | None = None
    #: How many times a seed was triggered for the task (names placeholders).
    seed_triggers: int = 0
    #: piece number -> "blake3:<hex>", fixed by the first peer that reported the piece from the
    #: origin: children check parents' bytes against these (GetPieceDigests).
    piece_digests: dict[int, str] = attrs.Factory(dict)
    #: Back-to-source reports whose digest contradicted the anchored one.
    digest_conflicts: int = 0

    @property
    def state(self) -> TaskState:
        states = {p.state for p in self.peers.values()}
        if PeerState.SUCCEEDED in states:
            return TaskState.SUCCEEDED
        if states & ACTIVE_STATES:
            return TaskState.RUNNING
        if PeerState.FAILED in states:
            return TaskState.FAILED
        return TaskState.PENDING

    @property
    def is_empty(self) -> bool:
        """Known to have no content (a peer finished it with length 0)."""
        return self.content_length == 0

    def back_to_source_count(self, *, include_seeds: bool = False, exclude: Peer | None = None) -> int:
        """Active peers fetching from the origin (told to by us, or on their own)."""
        return sum(
            1
            for p in self.peers.values()
            if p.state in ACTIVE_STATES
            and p is not exclude
            and (p.need_back_to_source or p.state is PeerState.BACK_TO_SOURCE)
            and (include_seeds or not p.host.is_seed)
        )

    def seed_peers(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.host.is_seed]

    def __repr__(self) -> str:
        return f"Task({self.id!r}, {self.state.value}, peers={len(self.peers)})"


@attrs.define(eq=False, repr=False)
class Peer:
    id: str
    host: Host
    task: Task
    created_at: float
    updated_at: float
    state: PeerState = PeerState.PENDING
    #: common.Priority value.
    priority: int = 0
    #: Bit n set = piece n is here.
    pieces: int = 0
    finished_count: int = 0
    #: Cost (seconds) of each finished piece, indexed by piece number (0 = unknown).
    piece_costs: array = attrs.Factory(lambda: array("f"))
    #: Seconds/MiB of the most recent pieces this peer fetched (any source).
    download_costs: deque[float] = attrs.Factory(lambda: deque(maxlen=COST_WINDOW))
    #: Seconds/MiB of the most recent pieces children fetched from this peer.
    upload_costs: deque[float] = attrs.Factory(lambda: deque(maxlen=COST_WINDOW))
    #: Parents in use (edges parent -> self), by peer id.
    parents: dict[str, Peer] = attrs.Factory(dict)
    #: Children downloading from this peer (edges self -> child), by peer id.
    children: dict[str, Peer] = attrs.Factory(dict)
    #: Parents (peer ids) this peer must not be offered again.
    blocked_parents: set[str] = attrs.Factory(set)
    #: The scheduler told this peer to go to the origin (counts against the task's limit).
    need_back_to_source: bool = False
    #: From the download request: never / immediately go to the origin.
    disable_back_to_source: bool = False
    requested_back_to_source: bool = False
    #: Other ids this peer is known by (a triggered placeholder's id after adoption).
    aliases: set[str] = attrs.Factory(set)
    finished_at: float | None = None

    def has_piece(self, number: int) -> bool:
        return bool(self.pieces >> number & 1)

    def piece_numbers(self) -> Iterator[int]:
        bits, n = self.pieces, 0
        while bits:
            if bits & 1:
                yield n
            bits >>= 1
            n += 1

    def has_pieces_missing_from(self, other: Peer) -> bool:
        """True when this peer holds a piece ``other`` lacks."""
        return bool(self.pieces & ~other.pieces)

    @property
    def is_complete(self) -> bool:
        return self.state is PeerState.SUCCEEDED

    def __repr__(self) -> str:
        return f"Peer({self.id!r}, {self.state.value}, host={self.host.id!r}, pieces={self.finished_count})"


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
        return [h for h in self.hosts.values() if h.is_seed]

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
        if host is None:
            host = self.hosts[host_id] = Host(id=host_id, created_at=now, announced_at=now, ttl=ttl)
        host.announced_at = now
        host.ttl = ttl
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
        return host, is_new

    def delete_host(self, host_id: str) -> list[Peer]:
        """Drop a host and every peer on it; returns the peers removed."""
        host = self.host(host_id)
        removed = list(host.peers.values())
        for peer in removed:
            self._remove_peer(peer)
        del self.hosts[host_id]
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
            for child in placeholder.children.values():
                child.parents.pop(old_id, None)
                child.parents[peer_id] = placeholder
            peer = placeholder
            peer.updated_at = now
        else:
            peer = Peer(id=peer_id, host=host, task=task, created_at=now, updated_at=now)
        peer.priority = priority
        peer.disable_back_to_source = disable_back_to_source
        peer.requested_back_to_source = need_back_to_source
        self.peers[peer_id] = host.peers[peer_id] = task.peers[peer_id] = peer
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
        self.peers[peer_id] = host.peers[peer_id] = task.peers[peer_id] = peer
        task.updated_at = now
        return peer

    def _touch(self, peer: Peer) -> float:
        now = self.clock()
        peer.updated_at = now
        peer.task.updated_at = now
        return now

    def _transition(self, peer: Peer, event: str) -> None:
        peer.state = next_state(peer.state, event)
        self._touch(peer)

    def peer_started(self, peer: Peer) -> None:
        self._transition(peer, "start")

    def peer_back_to_source_started(self, peer: Peer) -> None:
        self._transition(peer, "back_to_source")
        self.clear_parents(peer)

    def set_parents(self, peer: Peer, parents: Iterable[Peer]) -> None:
        """Replace the peer's parents in use (edges) with ``parents``."""
        self.clear_parents(peer)
        for parent in parents:
            if parent is peer:
                continue
            peer.parents[parent.id] = parent
            parent.children[peer.id] = peer
        self._touch(peer)

    def clear_parents(self, peer: Peer) -> None:
        for parent in peer.parents.values():
            parent.children.pop(peer.id, None)
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
                    parent.children.pop(peer.id, None)
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
        if len(peer.piece_costs) <= number:
            peer.piece_costs.extend([0.0] * (number + 1 - len(peer.piece_costs)))
        peer.piece_costs[number] = cost
        per_mib = cost_per_mib(cost, length)
        peer.download_costs.append(per_mib)
        if parent is not None:
            parent.upload_costs.append(per_mib)
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

    def piece_failed(self, peer: Peer, number: int, *, parent_id: str, temporary: bool) -> Peer | None:
        """A child could not get a piece from ``parent_id``.

        A permanent failure (bad digest, parent gone) blocks that parent for
        this peer; a temporary one only counts against the parent's host.
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
        if task.piece_count is not None and task.piece_count != piece_count:
            raise InvalidArgument(f"piece count {piece_count} differs from the task's {task.piece_count}")
        top = max((p.pieces.bit_length() for p in task.peers.values()), default=0)
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

    def peer_failed(self, peer: Peer) -> None:
        self._transition(peer, "fail")
        self.clear_parents(peer)
        self._drop_children(peer)
        if peer.state is PeerState.FAILED and peer.host.is_seed:
            peer.task.seed_trigger_failed_at = self.clock()

    def _drop_children(self, peer: Peer) -> None:
        for child in peer.children.values():
            child.parents.pop(peer.id, None)
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
        peer.task.peers.pop(peer.id, None)
        for alias in peer.aliases:
            self.aliases.pop(alias, None)
        peer.task.updated_at = self.clock()

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
                peer.finished_count -= bin(removed).count("1")
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
