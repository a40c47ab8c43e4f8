"""The scheduler's protocol over the proto messages, without gRPC or sockets.

``SchedulerCore`` validates every request, applies it to the :class:`Graph`,
and answers with proto messages or raises :mod:`dffs.scheduler.errors`
exceptions (each names one gRPC status code).  The service adds only what
needs I/O: status codes on the wire, waiting between scheduling rounds, the
GC timer and the RPC that triggers a seed.

The AnnouncePeer contract in short (the full one, message by message, is in
``dffs.scheduler.service``'s docstring):

1. The first message of a stream must be ``register_peer_request``; it
   creates the peer (its host must have been announced) and asks for an
   answer.
2. Every later message carries the same host, task and peer ids.
3. ``reschedule_request`` asks for an answer; no other message does.
4. Each answer is exactly one AnnouncePeerResponse (normal task with
   candidate parents, need back-to-source, empty task), or the stream ends
   with a status.

Waiting: a session the policy cannot answer yet waits in the core's
:class:`~dffs.scheduler.waiting.WaitingRoom` (:meth:`SchedulerCore.wait`).
Every request that changes the graph hands the graph's offers to the room
before it returns, which wakes only the waiters a change can help; the
service re-runs :meth:`SchedulerCore.schedule` for a woken session, and at
its next round otherwise.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

import attrs
from google.protobuf import duration_pb2, timestamp_pb2

from dffs.api import common_pb2, manager_pb2, scheduler_pb2
from dffs.digest import is_piece_digest
from dffs.idgen import host_id
from dffs.scheduler import policy
from dffs.scheduler.config import SchedulerConfig
from dffs.scheduler.errors import FailedPrecondition, InvalidArgument, NotFound, SchedulerError
from dffs.scheduler.resource import (
    ACTIVE_STATES,
    GcReport,
    Graph,
    Host,
    HostType,
    Peer,
    PeerState,
    Task,
    set_bits,
)
from dffs.scheduler.waiting import WaitingRoom
from dffs.security.redact import shareable_headers

if TYPE_CHECKING:  # the manager's module pulls in its database layer
    from dffs.manager.tunables import SchedulerTunables

log = logging.getLogger("dffs.scheduler")

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: States of a peer that wants parents (a register or reschedule may be answered).
SCHEDULABLE_STATES = frozenset({PeerState.PENDING, PeerState.RUNNING, PeerState.BACK_TO_SOURCE})
#: Most piece numbers a back-to-source answer lists per helper (what the helper holds and the asker lacks).
MAX_PROMISED_PIECES = 65536
#: Longest id (host, task, peer) accepted.
MAX_ID_LENGTH = 512
MAX_URL_LENGTH = 64 * 1024
#: Pieces one GetPieceDigests request may name (an answer stays well under the message limit).
MAX_DIGESTS_PER_ANSWER = 65536
#: Longest piece cost accepted (a day).
MAX_COST_SECONDS = 24 * 3600.0
#: Most tasks one StatTasks call may name.
MAX_STAT_TASKS = 10_000
#: Most tasks one AnnounceFinishedTasks call may register.
MAX_FINISHED_TASKS = 1_000
#: The origin validators a finished peer reports, kept per task and answered by StatTask.
VALIDATORS = ("etag", "last_modified", "content_type")
MAX_VALIDATOR_LENGTH = 1024

_HOST_TYPES = {common_pb2.HOST_TYPE_NORMAL: HostType.NORMAL, common_pb2.HOST_TYPE_SEED: HostType.SEED}
_HOST_TYPES_BACK = {v: k for k, v in _HOST_TYPES.items()}


@attrs.frozen
class SeedTriggerRequest:
    """Ask the seed daemon at ``ip:port`` to download ``download`` (task ``task_id``).

    ``placeholder_id`` is the peer id children were given for the seed; the
    seed's own registration for the task adopts it.
    """

    task_id: str
    host_id: str
    ip: str
    port: int
    placeholder_id: str
    download: common_pb2.Download = attrs.field(eq=False)
    #: Monotonic time of the decision.
    at: float = 0.0


@attrs.frozen
class Answer:
    """The result of one scheduling round: a response to send, or None (retry later)."""

    decision: policy.Decision
    response: scheduler_pb2.AnnouncePeerResponse | None = None
    trigger: SeedTriggerRequest | None = None


@attrs.define(eq=False)
class Session:
    """One AnnouncePeer stream, after its register message."""

    host_id: str
    task_id: str
    peer_id: str
    peer: Peer
    #: Peers offered by the changes that woke this session, for its next decision.
    hints: list[Peer] = attrs.Factory(list)


def _check_id(kind: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{kind} id is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{kind} id is longer than {MAX_ID_LENGTH} characters")
    return value


def _validators(msg: Any) -> dict[str, str]:
    """The origin validators a finished peer reported, bounded like every other string a peer sends."""
    out = {}
    for name in VALIDATORS:
        if msg.HasField(name):
            value = getattr(msg, name)
            if len(value) > MAX_VALIDATOR_LENGTH or any(c in value for c in "\r\n\x00"):
                raise InvalidArgument(f"{name} longer than {MAX_VALIDATOR_LENGTH} characters or not one line")
            out[name] = value
    return out


def _record_validators(task: Task, validators: dict[str, str], *, authoritative: bool) -> None:
    """What StatTask will say about the content: the word of a peer that fetched from the origin wins
    (the origin may have changed since); a peer that only took pieces from others fills a blank."""
    if not validators:
        return
    if authoritative or all(getattr(task, name) is None for name in VALIDATORS):
        for name in VALIDATORS:
            setattr(task, name, validators.get(name))


def _seconds(d: duration_pb2.Duration, what: str) -> float:
    value = float(d.seconds + d.nanos / 1e9)
    if value < 0 or value > MAX_COST_SECONDS:
        raise InvalidArgument(f"{what} {value}s out of range")
    return value


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _dispatching(method: Callable[Concatenate[SchedulerCore, _P], _R]) -> Callable[Concatenate[SchedulerCore, _P], _R]:
    """After the request (even a rejected one), hand the graph's offers to the waiting room."""

    @functools.wraps(method)
    def wrapper(self: SchedulerCore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.dispatch_offers()

    return wrapper


class SchedulerCore:
    """The graph plus the AnnouncePeer protocol.  Not thread-safe: one caller at a time."""

    def __init__(
        self,
        config: SchedulerConfig = SchedulerConfig(),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.policy = config.policy()
        self.clock = clock
        self._wall_offset = wall_clock() - clock()
        self.graph = Graph(
            collect_offers=True,
            clock=clock,
            peer_ttl=config.peer_ttl,
            task_ttl=config.task_ttl,
            host_ttl=config.host_ttl,
            host_ttl_intervals=config.host_ttl_intervals,
            failed_peer_ttl=config.failed_peer_ttl,
            seed_trigger_timeout=config.seed_trigger_timeout,
            upload_slots=config.upload_slots,
            seed_upload_slots=config.seed_upload_slots,
            max_piece_count=config.max_piece_count,
        )
        #: The most recent seed triggers, for logs and introspection.
        self.triggers: deque[SeedTriggerRequest] = deque(maxlen=256)
        #: Hostnames the cluster's dynamic config blocks (never parents, never triggered).
        self.blocked_hostnames: frozenset[str] = frozenset()
        #: Seed hosts added from the manager's list rather than by their own announcement.
        self.manager_seed_ids: set[str] = set()
        #: Sessions waiting for an answer.
        self.waiting = WaitingRoom()
        self.graph.offer_wanted = self.waiting.has_waiters
        #: Draws the candidates each decision examines.
        self.rng = random.Random()
        #: host id -> (host, generation, message): see :meth:`host_message`.
        self._host_messages: dict[str, tuple[Host, int, common_pb2.Host]] = {}

    # ---- waiting ----------------------------------------------------------

    def wait(self, session: Session, wake: Callable[[], None]) -> None:
        """The session got no answer: ``wake()`` (once) when a change may let it be answered."""
        peer = self._session_peer(session)
        self.waiting.add(peer, wake, session.hints)

    def unwait(self, session: Session) -> None:
        self.waiting.discard(session.peer)

    def dispatch_offers(self) -> None:
        """Wake the waiters the graph's changes since the last call can help."""
        if not self.graph.offers:
            return
        share = self.policy.candidate_parent_limit
        for offer in self.graph.take_offers():
            self.waiting.offer(offer, share=share)

    def wake_all(self) -> int:
        """Wake every waiting session (the cluster's config or seed list changed)."""
        return self.waiting.wake_all()

    # ---- dynamic config ---------------------------------------------------

    def apply_tunables(self, tunables: SchedulerTunables) -> bool:
        """Apply the cluster's dynamic config; True when something changed.

        A limit the cluster does not set falls back to this scheduler's own config.
        """
        policy_now = attrs.evolve(
            self.policy,
            candidate_parent_limit=(
                tunables.candidate_parent_limit
                if tunables.candidate_parent_limit is not None
                else self.config.candidate_parent_limit
            ),
            filter_parent_limit=(
                tunables.filter_parent_limit
                if tunables.filter_parent_limit is not None
                else self.config.filter_parent_limit
            ),
        )
        changed = policy_now != self.policy or tunables.blocked_hosts != self.blocked_hostnames
        if changed:
            self.policy = policy_now
            self.blocked_hostnames = tunables.blocked_hosts
            log.info(
                "event=cluster_config_applied candidate_parent_limit=%d filter_parent_limit=%d blocked_hosts=%s",
                policy_now.candidate_parent_limit,
                policy_now.filter_parent_limit,
                ",".join(sorted(self.blocked_hostnames)) or "-",
            )
        return changed

    def blocklist(self) -> frozenset[str]:
        """Host ids of the blocked hostnames (the evaluator matches peer and host ids)."""
        if not self.blocked_hostnames:
            return frozenset()
        return frozenset(h.id for h in self.graph.hosts.values() if h.hostname in self.blocked_hostnames)

    def learn_seed_peers(self, seeds: list[manager_pb2.SeedPeer], interval: float) -> list[str]:
        """Add the manager's active seed peers that have not announced themselves here;
        returns the ids of hosts that are new. A seed that announces itself is left alone."""
        new = []
        for seed in seeds:
            hid = host_id(seed.ip, seed.hostname, True)
            known = self.graph.hosts.get(hid)
            if known is not None and hid not in self.manager_seed_ids:
                continue  # announced by the seed daemon itself: its own figures win
            try:
                request = scheduler_pb2.AnnounceHostRequest(
                    host=common_pb2.Host(
                        id=hid,
                        type=common_pb2.HOST_TYPE_SEED,
                        hostname=seed.hostname,
                        ip=seed.ip,
                        port=seed.port,
                        download_port=seed.download_port,
                        idc=seed.idc,
                        location=seed.location,
                    )
                )
                request.interval.CopyFrom(_duration(interval))
                if self.announce_host(request):
                    new.append(hid)
                self.manager_seed_ids.add(hid)
            except SchedulerError as exc:
                log.warning("event=manager_seed_rejected hostname=%s ip=%s error=%r", seed.hostname, seed.ip, str(exc))
        return new

    def list_hosts(self) -> scheduler_pb2.ListHostsResponse:
        return scheduler_pb2.ListHostsResponse(hosts=[self.host_message(h) for h in self.graph.hosts.values()])

    # ---- hosts ------------------------------------------------------------

    @_dispatching
    def knows_host(self, host_id: str) -> bool:
        """The host has spoken to this scheduler (and was not forgotten since): its tasks may be
        known here. A seed only the manager named has not."""
        return host_id in self.graph.hosts and host_id not in self.manager_seed_ids

    def announce_host(self, request: scheduler_pb2.AnnounceHostRequest) -> bool:
        """Register or refresh a host; True when it is new."""
        if not request.HasField("host"):
            raise InvalidArgument("announce_host_request without host")
        h = request.host
        _check_id("host", h.id)
        self.manager_seed_ids.discard(h.id)  # the host speaks for itself now
        if h.type not in _HOST_TYPES:
            raise InvalidArgument(f"host {h.id!r}: unknown host type {h.type}")
        try:
            ipaddress.ip_address(h.ip)
        except ValueError:
            raise InvalidArgument(f"host {h.id!r}: ip {h.ip!r} is not an IP address") from None
        if not 0 < h.port <= 65535:
            raise InvalidArgument(f"host {h.id!r}: port {h.port} out of range")
        if not 0 <= h.download_port <= 65535 or (h.download_port == 0 and not h.disable_shared):
            raise InvalidArgument(f"host {h.id!r}: download port {h.download_port} out of range")
        interval = _seconds(request.interval, "announce interval") if request.HasField("interval") else None
        host, is_new = self.graph.announce_host(
            h.id,
            type=_HOST_TYPES[h.type],
            hostname=h.hostname,
            ip=h.ip,
            port=h.port,
            download_port=h.download_port,
            idc=h.idc,
            location=h.location,
            labels=dict(h.labels),
            os=h.os,
            version=h.version,
            disable_shared=h.disable_shared,
            interval=interval,
        )
        self.host_message(host)  # built now if the host said something new: no answer naming it waits for it
        if is_new:
            log.info(
                "event=host_announced host=%s type=%s ip=%s port=%d download_port=%d ttl=%.1f",
                host.id,
                host.type.value,
                host.ip,
                host.port,
                host.download_port,
                host.ttl,
            )
        return is_new

    @_dispatching
    def delete_host(self, request: scheduler_pb2.DeleteHostRequest) -> set[str]:
        """Drop a host and its peers; returns the ids of the tasks touched."""
        _check_id("host", request.host_id)
        removed = self.graph.delete_host(request.host_id)
        self._host_messages.pop(request.host_id, None)
        log.info("event=host_deleted host=%s peers=%d", request.host_id, len(removed))
        return {p.task.id for p in removed}

    # ---- tasks and peers --------------------------------------------------

    def stat_task(self, request: scheduler_pb2.StatTaskRequest) -> common_pb2.Task:
        _check_id("task", request.task_id)
        return self.task_message(self.graph.task(request.task_id))

    def piece_digests(self, request: scheduler_pb2.GetPieceDigestsRequest) -> scheduler_pb2.GetPieceDigestsResponse:
        """The anchored digests of the pieces asked (all anchored ones when none are named)."""
        _check_id("task", request.task_id)
        if len(request.piece_numbers) > MAX_DIGESTS_PER_ANSWER:
            raise InvalidArgument(f"at most {MAX_DIGESTS_PER_ANSWER} pieces per request")
        anchored = self.graph.task(request.task_id).piece_digests
        if not request.piece_numbers:
            return scheduler_pb2.GetPieceDigestsResponse(digests=anchored)
        return scheduler_pb2.GetPieceDigestsResponse(
            digests={n: anchored[n] for n in request.piece_numbers if n in anchored}
        )

    def stat_tasks(self, request: scheduler_pb2.StatTasksRequest) -> scheduler_pb2.StatTasksResponse:
        """StatTask for many tasks in one answer (a directory's files); unknown ones are left out."""
        if len(request.task_ids) > MAX_STAT_TASKS:
            raise InvalidArgument(f"at most {MAX_STAT_TASKS} task ids per StatTasks, not {len(request.task_ids)}")
        want = min(request.holders_per_task, policy.MAX_HOLDERS)
        asker = self.graph.hosts.get(request.host_id) if want else None
        blocklist = self.blocklist() if want else frozenset()
        answer = scheduler_pb2.StatTasksResponse()
        for task_id in dict.fromkeys(request.task_ids):
            _check_id("task", task_id)
            task = self.graph.tasks.get(task_id)
            if task is None:
                continue
            answer.tasks.append(self.task_message(task))
            digest = task.piece_digests.get(0) if want else None
            if digest is None:
                continue  # no anchored digest: a holder's bytes could not be checked
            found = policy.holders(task, asker, want, self.rng, blocklist)
            if found:
                entry = answer.holders.add(task_id=task_id, piece_digest=digest)
                parent_task = self.parent_task_message(task)
                for peer in found:
                    self._fill_peer(entry.peers.add(), peer, parent_task)
        return answer

    @_dispatching
    def announce_finished_tasks(
        self, request: scheduler_pb2.AnnounceFinishedTasksRequest
    ) -> scheduler_pb2.AnnounceFinishedTasksResponse:
        """Register each whole task as a finished peer of the calling host, as a register, its piece
        reports and a finished report on a stream of its own would — one call for a batch of small
        files, or for every task a host holds when a scheduler forgot it. A bad entry is refused alone
        (its reason in the answer); the others are registered. A piece from a parent never anchors a
        digest; one from the origin does, like its back-to-source report (docs/security.md)."""
        host_id = _check_id("host", request.host_id)
        self.graph.host(host_id)  # NotFound for an unannounced host: the whole call
        if len(request.tasks) > MAX_FINISHED_TASKS:
            raise InvalidArgument(f"at most {MAX_FINISHED_TASKS} tasks per AnnounceFinishedTasks")
        answer = scheduler_pb2.AnnounceFinishedTasksResponse()
        for entry in request.tasks:
            try:
                self._register_finished(host_id, entry)
            except SchedulerError as exc:
                answer.refused[entry.task_id[:MAX_ID_LENGTH]] = str(exc)[:512]
        if answer.refused:
            log.info("event=finished_tasks_refused host=%s refused=%d", host_id, len(answer.refused))
        return answer

    def _register_finished(self, host_id: str, entry: scheduler_pb2.FinishedTask) -> None:
        register = scheduler_pb2.AnnouncePeerRequest(
            host_id=host_id,
            task_id=entry.task_id,
            peer_id=entry.peer_id,
            register_peer_request=scheduler_pb2.RegisterPeerRequest(download=entry.download),
        )
        if not entry.pieces or len(entry.pieces) != entry.piece_count:
            raise InvalidArgument(f"{len(entry.pieces)} pieces reported for a task of {entry.piece_count}")
        validators = _validators(entry)
        for piece in entry.pieces:
            if piece.digest and not is_piece_digest(piece.digest):
                raise InvalidArgument(f"piece {piece.number}: malformed digest {piece.digest[:80]!r}")
        session = self._register_unchecked(register)
        peer = session.peer
        graph = self.graph
        from_origin = not any(piece.parent_id for piece in entry.pieces)
        try:
            for piece in entry.pieces:
                graph.piece_finished(
                    peer,
                    piece.number,
                    parent_id=_check_id("parent", piece.parent_id) if piece.parent_id else None,
                    cost=_seconds(piece.cost, "piece cost"),
                    length=piece.length,
                    offset=piece.offset,
                )
            graph.peer_finished(peer, content_length=entry.content_length, piece_count=entry.piece_count)
        except SchedulerError:
            graph.leave_peer(peer)
            raise
        for piece in entry.pieces:
            if piece.digest and not piece.parent_id:
                self._anchor(peer, piece.number, piece.digest)  # as its back-to-source report would
        _record_validators(peer.task, validators, authoritative=from_origin)

    @_dispatching
    def delete_task(self, request: scheduler_pb2.DeleteTaskRequest) -> set[str]:
        _check_id("host", request.host_id)
        _check_id("task", request.task_id)
        peers = self.graph.delete_task_from_host(request.host_id, request.task_id)
        log.info("event=task_deleted_from_host task=%s host=%s peers=%d", request.task_id, request.host_id, len(peers))
        return {request.task_id}

    @_dispatching
    def delete_pieces(self, request: scheduler_pb2.DeletePiecesRequest) -> set[str]:
        _check_id("host", request.host_id)
        _check_id("task", request.task_id)
        peers = self.graph.delete_pieces(request.host_id, request.task_id, request.piece_numbers)
        log.info(
            "event=pieces_deleted_from_host task=%s host=%s peers=%d pieces=%d",
            request.task_id,
            request.host_id,
            len(peers),
            len(request.piece_numbers),
        )
        return {request.task_id}

    def _peer_for(self, host_id: str, task_id: str, peer_id: str) -> Peer:
        _check_id("peer", peer_id)
        peer = self.graph.peer(peer_id)
        if task_id and peer.task.id != task_id:
            raise InvalidArgument(f"peer {peer_id!r} belongs to task {peer.task.id!r}, not {task_id!r}")
        if host_id and peer.host.id != host_id:
            raise InvalidArgument(f"peer {peer_id!r} is on host {peer.host.id!r}, not {host_id!r}")
        return peer

    def stat_peer(self, request: scheduler_pb2.StatPeerRequest) -> common_pb2.Peer:
        peer = self._peer_for(request.host_id, request.task_id, request.peer_id)
        return self.peer_message(peer, with_pieces=True)

    @_dispatching
    def delete_peer(self, request: scheduler_pb2.DeletePeerRequest) -> set[str]:
        peer = self._peer_for(request.host_id, request.task_id, request.peer_id)
        self.graph.leave_peer(peer)
        log.info("event=peer_deleted task=%s peer=%s", peer.task.id, peer.id)
        return {peer.task.id}

    # ---- AnnouncePeer -----------------------------------------------------

    @_dispatching
    def register(self, request: scheduler_pb2.AnnouncePeerRequest) -> Session:
        """The first message of a stream: create the peer."""
        return self._register_unchecked(request)

    def _register_unchecked(self, request: scheduler_pb2.AnnouncePeerRequest) -> Session:
        """:meth:`register` without handing offers to the waiting room (its callers do)."""
        kind = request.WhichOneof("request")
        if kind != "register_peer_request":
            raise FailedPrecondition(f"the first AnnouncePeer message must be register_peer_request, not {kind}")
        host_id = _check_id("host", request.host_id)
        task_id = _check_id("task", request.task_id)
        peer_id = _check_id("peer", request.peer_id)
        reg = request.register_peer_request
        if not reg.HasField("download"):
            raise InvalidArgument("register_peer_request without download")
        d = reg.download
        if not d.url:
            raise InvalidArgument("download url is empty")
        if len(d.url) > MAX_URL_LENGTH:
            raise InvalidArgument(f"download url longer than {MAX_URL_LENGTH} characters")
        if d.type not in (common_pb2.TASK_TYPE_STANDARD, common_pb2.TASK_TYPE_PERSISTENT):
            raise InvalidArgument(f"unknown task type {d.type}")
        if d.priority not in common_pb2.Priority.values():
            raise InvalidArgument(f"unknown priority {d.priority}")
        if d.HasField("piece_length") and d.piece_length == 0:
            raise InvalidArgument("piece length 0")
        peer = self.graph.register_peer(
            peer_id,
            host_id,
            task_id,
            url=d.url,
            tag=d.tag,
            application=d.application,
            task_type=d.type,
            digest=d.digest if d.HasField("digest") else None,
            filtered_query_params=d.filtered_query_params,
            # Credentials never stay here (a daemon strips them; this is for one that did not).
            request_header=shareable_headers(d.request_header),
            piece_length=d.piece_length if d.HasField("piece_length") else None,
            priority=d.priority,
            disable_back_to_source=d.disable_back_to_source,
            need_back_to_source=d.need_back_to_source,
        )
        log.info("event=peer_registered task=%s peer=%s host=%s seed=%s", task_id, peer_id, host_id, peer.host.is_seed)
        return Session(host_id=host_id, task_id=task_id, peer_id=peer_id, peer=peer)

    def _anchor(self, peer: Peer, number: int, digest: str) -> None:
        """Anchor an origin piece's digest; a report contradicting the anchor makes its host suspect."""
        if not self.graph.anchor_piece_digest(peer, number, digest):
            log.warning(
                "event=digest_conflict task=%s peer=%s host=%s piece=%d reported=%s anchored=%s action=suspect",
                peer.task.id,
                peer.id,
                peer.host.id,
                number,
                digest,
                peer.task.piece_digests[number],
            )

    def _session_peer(self, session: Session) -> Peer:
        peer = session.peer
        if self.graph.peers.get(session.peer_id) is not peer:
            raise NotFound(f"peer {session.peer_id!r} was deleted")
        return peer

    @_dispatching
    def handle(self, session: Session, request: scheduler_pb2.AnnouncePeerRequest) -> bool:
        """Apply a message after register; True when it asks for an answer (reschedule)."""
        for kind, got, want in (
            ("host", request.host_id, session.host_id),
            ("task", request.task_id, session.task_id),
            ("peer", request.peer_id, session.peer_id),
        ):
            if got != want:
                raise InvalidArgument(f"{kind} id {got!r} differs from the registered {want!r}")
        peer = self._session_peer(session)
        kind = request.WhichOneof("request")
        graph = self.graph
        if kind is None:
            raise InvalidArgument("AnnouncePeer message without a request")
        if kind == "register_peer_request":
            raise FailedPrecondition(f"peer {peer.id!r} is already registered on this stream")
        if kind == "download_peer_started_request":
            graph.peer_started(peer)
        elif kind == "download_peer_back_to_source_started_request":
            graph.peer_back_to_source_started(peer)
            log.info("event=peer_back_to_source_started task=%s peer=%s", peer.task.id, peer.id)
        elif kind == "reschedule_request":
            if peer.state not in SCHEDULABLE_STATES:
                raise FailedPrecondition(f"peer in state {peer.state.value} cannot be rescheduled")
            avoid = [p.id for p in request.reschedule_request.candidate_parents]
            for parent_id in avoid:
                _check_id("parent", parent_id)
            graph.block_parents(peer, avoid)
            graph.clear_parents(peer)
            log.info("event=reschedule task=%s peer=%s avoid=%s", peer.task.id, peer.id, ",".join(avoid) or "-")
            return True
        elif kind in ("download_peer_finished_request", "download_peer_back_to_source_finished_request"):
            msg = getattr(request, kind)
            validators = _validators(msg)
            from_origin = kind.startswith("download_peer_back") or peer.need_back_to_source or peer.host.is_seed
            graph.peer_finished(peer, content_length=msg.content_length, piece_count=msg.piece_count)
            _record_validators(peer.task, validators, authoritative=from_origin or peer.requested_back_to_source)
            log.info(
                "event=peer_succeeded task=%s peer=%s content_length=%d pieces=%d back_to_source=%s",
                peer.task.id,
                peer.id,
                msg.content_length,
                msg.piece_count,
                kind.startswith("download_peer_back"),
            )
        elif kind in ("download_peer_failed_request", "download_peer_back_to_source_failed_request"):
            graph.peer_failed(peer)
            log.info(
                "event=peer_failed task=%s peer=%s back_to_source=%s description=%r",
                peer.task.id,
                peer.id,
                kind.startswith("download_peer_back"),
                getattr(request, kind).description,
            )
        elif kind in ("download_piece_finished_request", "download_piece_back_to_source_finished_request"):
            msg = getattr(request, kind)
            if not msg.HasField("piece"):
                raise InvalidArgument(f"{kind} without piece")
            piece = msg.piece
            from_parent = kind == "download_piece_finished_request"
            parent_id = None
            if from_parent:
                if not piece.HasField("parent_id") or not piece.parent_id:
                    raise InvalidArgument(
                        f"piece {piece.number} without parent_id "
                        "(origin pieces go in download_piece_back_to_source_finished_request)"
                    )
                parent_id = _check_id("parent", piece.parent_id)
            graph.piece_finished(
                peer,
                piece.number,
                parent_id=parent_id,
                cost=_seconds(piece.cost, "piece cost"),
                length=piece.length,
                offset=piece.offset,
            )
            if piece.digest and not from_parent:
                if not is_piece_digest(piece.digest):
                    raise InvalidArgument(f"piece {piece.number}: malformed digest {piece.digest[:80]!r}")
                self._anchor(peer, piece.number, piece.digest)
            log.debug(
                "event=piece_finished task=%s peer=%s piece=%d parent=%s",
                peer.task.id,
                peer.id,
                piece.number,
                parent_id or "source",
            )
        elif kind == "download_piece_failed_request":
            msg = request.download_piece_failed_request
            _check_id("parent", msg.parent_id)
            parent = graph.piece_failed(
                peer, msg.piece_number, parent_id=msg.parent_id, temporary=msg.temporary, unreachable=msg.unreachable
            )
            log.info(
                "event=piece_failed task=%s peer=%s piece=%d parent=%s temporary=%s unreachable=%s description=%r",
                peer.task.id,
                peer.id,
                msg.piece_number,
                msg.parent_id,
                msg.temporary,
                msg.unreachable,
                msg.description,
            )
            if parent is not None and msg.unreachable and parent.host.reported_unreachable:
                log.info(
                    "event=host_unreachable host=%s reporters=%d",
                    parent.host.id,
                    len(parent.host.unreachable_reporters),
                )
        elif kind == "download_piece_back_to_source_failed_request":
            msg = request.download_piece_back_to_source_failed_request
            graph.check_piece_number(peer.task, msg.piece_number)
            if peer.state not in ACTIVE_STATES:
                raise FailedPrecondition(f"peer in state {peer.state.value} cannot report pieces")
            log.info(
                "event=piece_back_to_source_failed task=%s peer=%s piece=%d description=%r",
                peer.task.id,
                peer.id,
                msg.piece_number,
                msg.description,
            )
        else:  # a field added to the proto but not here
            raise InvalidArgument(f"unsupported AnnouncePeer request {kind}")
        return False

    def awaits_parents(self, session: Session) -> bool:
        """Whether the session's peer still wants a scheduling answer (not finished, failed or gone)."""
        peer = self.graph.peers.get(session.peer_id)
        return peer is session.peer and peer.state in SCHEDULABLE_STATES

    @_dispatching
    def schedule(self, session: Session, rounds: int = 0) -> Answer:
        """One scheduling round for the session's peer; apply what the policy decides."""
        peer = self._session_peer(session)
        if peer.state not in SCHEDULABLE_STATES:
            raise FailedPrecondition(f"peer in state {peer.state.value} needs no parents")
        hints, session.hints = session.hints, []
        decision = policy.decide(
            peer, self.graph, rounds=rounds, config=self.policy, blocklist=self.blocklist(), hints=hints, rng=self.rng
        )
        graph = self.graph
        task = peer.task
        Response = scheduler_pb2.AnnouncePeerResponse
        if isinstance(decision, policy.UseParents):
            graph.set_parents(peer, decision.parents)
            peer.need_back_to_source = False
            log.info(
                "event=scheduled task=%s peer=%s parents=%s rounds=%d",
                task.id,
                peer.id,
                ",".join(p.id for p in decision.parents),
                rounds,
            )
            return Answer(decision, self._normal(decision.parents))
        if isinstance(decision, policy.TriggerSeed):
            seed = graph.add_triggered_seed(task, decision.host)
            graph.set_parents(peer, [seed])
            peer.need_back_to_source = False
            trigger = SeedTriggerRequest(
                task_id=task.id,
                host_id=seed.host.id,
                ip=seed.host.ip,
                port=seed.host.port,
                placeholder_id=seed.id,
                download=self.download_message(task, priority=peer.priority),
                at=self.clock(),
            )
            self.triggers.append(trigger)
            log.info(
                "event=seed_triggered task=%s peer=%s seed_host=%s seed_peer=%s url=%s",
                task.id,
                peer.id,
                seed.host.id,
                seed.id,
                task.url,
            )
            return Answer(decision, self._normal([seed]), trigger)
        if isinstance(decision, policy.BackToSource):
            graph.clear_parents(peer)
            peer.need_back_to_source = True
            log.info(
                "event=back_to_source task=%s peer=%s rounds=%d reason=%r helpers=%s",
                task.id,
                peer.id,
                rounds,
                decision.reason,
                ",".join(h.id for h in decision.helpers) or "-",
            )
            response = Response(
                need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse(description=decision.reason)
            )
            if decision.helpers:
                helpers = response.need_back_to_source_response.helpers
                parent_task = self.parent_task_message(task)
                for helper in decision.helpers:
                    msg = helpers.add()
                    self._fill_peer(msg, helper, parent_task)
                    # what it holds that the asker lacks: waited for a moment rather than sent again
                    missing = helper.pieces & ~peer.pieces
                    msg.pieces.extend(common_pb2.Piece(number=n) for n in set_bits(missing, MAX_PROMISED_PIECES))
            return Answer(decision, response)
        if isinstance(decision, policy.EmptyTask):
            log.info("event=empty_task task=%s peer=%s", task.id, peer.id)
            return Answer(decision, Response(empty_task_response=scheduler_pb2.EmptyTaskResponse()))
        if isinstance(decision, policy.Refuse):
            log.info("event=refused task=%s peer=%s reason=%r", task.id, peer.id, decision.reason)
            raise FailedPrecondition(decision.reason)
        return Answer(decision)

    def _normal(self, parents: Iterable[Peer]) -> scheduler_pb2.AnnouncePeerResponse:
        parents = list(parents)
        response = scheduler_pb2.AnnouncePeerResponse()
        normal = response.normal_task_response
        normal.concurrent_piece_count = self.config.concurrent_piece_count
        if parents:
            task = self.parent_task_message(parents[0].task)  # the same for every parent: once
            for parent in parents:
                self._fill_peer(normal.candidate_parents.add(), parent, task)  # in place: no copy of each
        return response

    @_dispatching
    def stream_closed(self, session: Session) -> None:
        """The peer's stream ended.  A peer that never started leaves; one mid-download fails."""
        peer = self.graph.peers.get(session.peer_id)
        if peer is not session.peer:
            return
        if peer.state is PeerState.PENDING:
            self.graph.leave_peer(peer)
            log.info("event=peer_left task=%s peer=%s reason='stream closed before start'", peer.task.id, peer.id)
        elif peer.state in (PeerState.RUNNING, PeerState.BACK_TO_SOURCE):
            self.graph.peer_failed(peer)
            log.info("event=peer_failed task=%s peer=%s reason='stream closed mid-download'", peer.task.id, peer.id)

    @_dispatching
    def seed_trigger_failed(self, trigger: SeedTriggerRequest, reason: str) -> None:
        """The seed could not be asked (or refused): its placeholder fails."""
        peer = self.graph.find_peer(trigger.placeholder_id)
        log.warning(
            "event=seed_trigger_failed task=%s seed_host=%s seed_peer=%s reason=%r",
            trigger.task_id,
            trigger.host_id,
            trigger.placeholder_id,
            reason,
        )
        if peer is not None and peer.state is PeerState.TRIGGERED:
            self.graph.peer_failed(peer)

    @_dispatching
    def gc(self) -> GcReport:
        report = self.graph.gc()
        for gone in report.hosts:
            self._host_messages.pop(gone, None)
        if report:
            log.info(
                "event=gc hosts=%s peers=%d tasks=%d expired_triggers=%d",
                ",".join(report.hosts) or "-",
                len(report.peers),
                len(report.tasks),
                len(report.expired_triggers),
            )
        return report

    # ---- proto builders ---------------------------------------------------

    def _timestamp(self, monotonic: float) -> timestamp_pb2.Timestamp:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int((monotonic + self._wall_offset) * 1e9))
        return ts

    def host_message(self, host: Host) -> common_pb2.Host:
        """The host as a message, built once per change of what it announces (it goes into every
        answer naming it; :meth:`announce_host` builds it, so no decision pays for it)."""
        cached = self._host_messages.get(host.id)
        if cached is not None and cached[0] is host and cached[1] == host.generation:
            return cached[2]
        msg = self._build_host_message(host)
        self._host_messages[host.id] = (host, host.generation, msg)
        return msg

    def _build_host_message(self, host: Host) -> common_pb2.Host:
        return common_pb2.Host(
            id=host.id,
            type=_HOST_TYPES_BACK[host.type],
            hostname=host.hostname,
            ip=host.ip,
            port=host.port,
            download_port=host.download_port,
            idc=host.idc,
            location=host.location,
            labels=host.labels,
            os=host.os,
            version=host.version,
            disable_shared=host.disable_shared,
        )

    def task_message(self, task: Task) -> common_pb2.Task:
        msg = common_pb2.Task(
            id=task.id,
            type=cast(common_pb2.TaskType, task.type),
            url=task.url,
            tag=task.tag,
            application=task.application,
            filtered_query_params=task.filtered_query_params,
            request_header=shareable_headers(task.request_header),
            piece_length=task.piece_length or 0,
            piece_count=task.piece_count or 0,
            state=task.state.value,
            peer_count=len(task.peers),
            has_available_peer=task.has_available_peer(),
            created_at=self._timestamp(task.created_at),
            updated_at=self._timestamp(task.updated_at),
        )
        if task.digest is not None:
            msg.digest = task.digest
        for name in VALIDATORS:
            if (value := getattr(task, name)) is not None:
                setattr(msg, name, value)
        if task.content_length is not None:
            msg.content_length = task.content_length
            if task.content_length == 0:
                msg.size_scope = common_pb2.SIZE_SCOPE_EMPTY
            elif task.content_length <= 128:
                msg.size_scope = common_pb2.SIZE_SCOPE_TINY
            elif task.piece_count == 1:
                msg.size_scope = common_pb2.SIZE_SCOPE_SMALL
        return msg

    def parent_task_message(self, task: Task) -> common_pb2.Task:
        """The task as a candidate parent carries it: what the contract promises (id, type,
        piece length, and content length and piece count once known) and the state.

        Not the URL nor the request headers: those are the asking peer's own,
        and other peers' credentials have no business travelling with parents.
        """
        msg = common_pb2.Task(
            id=task.id,
            type=cast(common_pb2.TaskType, task.type),
            piece_length=task.piece_length or 0,
            piece_count=task.piece_count or 0,
            state=task.state.value,
        )
        if task.content_length is not None:
            msg.content_length = task.content_length
        return msg

    def peer_message(
        self, peer: Peer, *, with_pieces: bool = False, task: common_pb2.Task | None = None
    ) -> common_pb2.Peer:
        """``task``: the peer's task message when the caller built it already.

        Sub-messages are filled in place (CopyFrom, FromNanoseconds): several
        times cheaper than building them apart and passing them to the constructor.
        """
        msg = common_pb2.Peer()
        self._fill_peer(msg, peer, task if task is not None else self.task_message(peer.task))
        if with_pieces:
            costs = peer.piece_costs
            for n in peer.piece_numbers():
                cost = float(costs[n]) if n < len(costs) else 0.0
                msg.pieces.append(common_pb2.Piece(number=n, cost=_duration(cost)))
        return msg

    def _fill_peer(self, msg: common_pb2.Peer, peer: Peer, task: common_pb2.Task) -> None:
        end = peer.finished_at if peer.finished_at is not None else peer.updated_at
        msg.id = peer.id
        msg.priority = cast(common_pb2.Priority, peer.priority)
        msg.state = peer.state.value
        msg.need_back_to_source = peer.need_back_to_source
        msg.task.CopyFrom(task)
        msg.host.CopyFrom(self.host_message(peer.host))
        # seconds and nanos set directly: FromNanoseconds is Python code, three calls per parent.
        cost = int(max(0.0, end - peer.created_at) * 1e9)
        created = int((peer.created_at + self._wall_offset) * 1e9)
        updated = int((peer.updated_at + self._wall_offset) * 1e9)
        msg.cost.seconds, msg.cost.nanos = divmod(cost, 1_000_000_000)
        msg.created_at.seconds, msg.created_at.nanos = divmod(created, 1_000_000_000)
        msg.updated_at.seconds, msg.updated_at.nanos = divmod(updated, 1_000_000_000)

    def download_message(self, task: Task, *, priority: int = 0) -> common_pb2.Download:
        d = common_pb2.Download(
            url=task.url,
            type=cast(common_pb2.TaskType, task.type),
            tag=task.tag,
            application=task.application,
            priority=cast(common_pb2.Priority, priority),
            filtered_query_params=task.filtered_query_params,
            request_header=task.request_header,
        )
        if task.digest is not None:
            d.digest = task.digest
        if task.piece_length:
            d.piece_length = task.piece_length
        return d
