"""Downloading a task from other peers: the daemon's swarm and one fetcher per task.

:class:`P2PSwarm` is what the daemon gives its TaskManager: for every task
opened it hands out a :class:`P2PFetcher`, and when the origin cannot say what
an object is it asks the task's scheduler. A fetcher runs in its task's
background (:meth:`P2PFetcher.run`): it registers the task with a scheduler
(through :class:`~dffs.daemon.schedulers.SchedulerClient`), learns each
candidate parent's pieces through a ``SyncPieces`` stream, fetches every piece
from a parent that has it (verifying the digest; parents chosen by
:mod:`dffs.daemon.piece_choice`), reports each piece and each failure, asks for
new parents when none serves a piece in time, and goes to the origin when the
scheduler says so (or after ``parent_rounds`` fruitless waits, or when no
scheduler is left) for the pieces no parent it knows holds.

When the conversation's scheduler dies, the task moves to the first scheduler
of its ring that answers (a restarted one included, so late peers and moved
peers meet at the same place): it registers again, reports the pieces it holds
(those it fetched from the origin as origin pieces, the others as pieces from
a parent, which never anchor a digest: docs/security.md), and keeps its
parents and the digests it already learned meanwhile, so pieces keep coming
from the swarm while the new conversation starts.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable
from typing import Any

import attrs
import grpc
import trio

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from dffs.daemon.piece_choice import MAX_PARENT_FAILURES, Parent, choose_piece, pick_parent, unusable_parent
from dffs.daemon.schedulers import ChannelFactory, SchedulerClient, Stub, validators_of
from dffs.daemon.small_tasks import HOLDERS_PER_TASK, FinishedRegistrations, HintedFetcher, HolderHints
from dffs.digest import format_piece_digest, is_piece_digest
from dffs.errors import DffsError
from dffs.peertask import DownloadRequest, PeerTask
from dffs.rpc import bridge
from dffs.security.redact import shareable_headers, shareable_url
from dffs.source import SourceStat
from dffs.upload.client import ParentUnreachable, PeerError, PieceClient

log = logging.getLogger(__name__)


#: Seconds between asks for anchored digests the scheduler did not have yet (a report in flight).
ANCHOR_REFRESH = 0.2
#: How long a parent just given may take to say what it holds before the origin is asked instead.
SYNC_GRACE = 1.0
#: Pieces asked about per GetPieceDigests (the one needed and those after it).
ANCHOR_BATCH = 1024
#: Seconds after which an unanswered reschedule no longer stops the next one being sent (a scheduler
#: answers within its retry_limit x retry_interval, 5 s by default; each one sent meanwhile would
#: only queue behind it).
RESCHEDULE_PATIENCE = 15.0
#: Conversations a task may lose to dying schedulers before it stops looking for one.
MAX_FAILOVERS = 8
#: Seconds before walking the ring again after a lost conversation (doubling, up to the max).
FAILOVER_BACKOFF = 0.5
FAILOVER_BACKOFF_MAX = 5.0
#: How a stream ends when its scheduler went away (killed, restarted, unreachable).
#: A stream ending with one of these means the scheduler is gone, not that it answered: walk the
#: ring again. CANCELLED: the channel was closed under the stream (the manager removed that
#: scheduler) or the server went down mid-call; a cancellation of our own never surfaces here
#: as a status (trio cancels the task instead).
SCHEDULER_GONE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


class _SchedulerUnreachable(Exception):
    """The scheduler never answered the register: try the next one."""


class _ConversationLost(Exception):
    """The scheduler went away mid-conversation: register again, on the ring's first that answers."""


@attrs.frozen
class P2PSettings:
    #: Seconds a piece may wait for any parent to have it before asking for new parents.
    parent_wait: float = 3.0
    #: Such waits before going to the origin anyway.
    parent_rounds: int = 3
    #: A seed goes to the origin first (need_back_to_source in its register).
    seed: bool = False


class P2PSwarm:
    """The daemon's swarm (a :class:`dffs.peertask.Swarm`): fetchers through parents, metadata from schedulers."""

    def __init__(
        self,
        schedulers: SchedulerClient,
        piece_client: PieceClient,
        settings: P2PSettings,
        *,
        channel_factory: ChannelFactory,
        registrations: FinishedRegistrations | None = None,
    ):
        self.schedulers = schedulers
        self.piece_client = piece_client
        self.settings = settings
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.Channel] = {}
        #: Holders of small tasks a directory's StatTasks named (dffs.daemon.small_tasks).
        self.hints = HolderHints()
        #: Where a small task fetched from a holder is registered (None: never from a hint).
        self.registrations = registrations

    def fetcher(self, request: DownloadRequest) -> P2PFetcher | HintedFetcher:
        """A small task some holder was named for gets its piece from the holder without a conversation
        (when this host registers what it fetched: not a seed, whose tasks come from the origin)."""
        registrations = self.registrations
        if registrations is not None and registrations.running and not self.settings.seed:
            hint = self.hints.take(request.task_id)
            if hint is not None:
                return HintedFetcher(self, request, hint, registrations)
        return self.conversation(request)

    def conversation(self, request: DownloadRequest) -> P2PFetcher:
        """The fetcher that talks with the task's scheduler."""
        return P2PFetcher(self, request)

    async def stat(self, request: DownloadRequest) -> SourceStat | None:
        """What the swarm knows of one object (a lookup by name): asked as a directory of one, so a
        small one's holders come with it; the rest of the ring only when the first scheduler knows nothing."""
        found = await self.stat_many([request])
        if request.task_id in found:
            return found[request.task_id]
        if len(self.schedulers.ring(request.task_id)) < 2:
            return None
        return await self.schedulers.stat_task(request)

    async def stat_many(self, requests: list[DownloadRequest]) -> dict[str, SourceStat]:
        """What the swarm knows of many objects, and who holds the small ones (kept as hints)."""
        want = HOLDERS_PER_TASK if self.registrations is not None and not self.settings.seed else 0
        stats, hints = await self.schedulers.stat_tasks(requests, holders_per_task=want)
        for task_id, hint in hints.items():
            self.hints.put(task_id, hint)
        return stats

    def upload_stub(self, ip: str, port: int) -> dfdaemon_pb2_grpc.DfdaemonUploadStub:
        """A parent's DfdaemonUpload (SyncPieces); one channel per parent host, kept."""
        target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = self._channel_factory(target)
        return dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class P2PFetcher:
    """One task's pieces through parents (a :class:`dffs.peertask.PieceFetcher`)."""

    from_origin_only = False
    runs_in_background = True

    def __init__(self, swarm: P2PSwarm, request: DownloadRequest):
        self.swarm = swarm
        self.schedulers = swarm.schedulers
        self.settings = swarm.settings
        self.request = request
        self.task_id = request.task_id
        self.peer_id = self.schedulers.new_peer_id(self.task_id)
        self.parents: dict[str, Parent] = {}
        self.back_to_source = False
        self._changed = trio.Event()
        self._stream: bridge.BidiStream | None = None
        self._send_lock = trio.Lock()
        self._piece_parent: dict[int, str] = {}
        #: Where each piece stored by this fetcher came from, reported again after a failover:
        #: pieces from the origin, and the parent of every other one.
        self._from_origin: set[int] = set()
        self._got_from: dict[int, str] = {}
        #: The current conversation: cancelled when a send finds its scheduler gone.
        self._conversation: trio.CancelScope | None = None
        self._lost = False
        #: Between a lost conversation and the next one: pieces wait for it rather than for the origin.
        self._failing_over = False
        self._random = random.Random()
        self._nursery: trio.Nursery | None = None
        self._started_status: Any = None
        #: The scheduler of the current conversation (asked for anchored digests).
        self._stub: Stub | None = None
        #: piece number -> the digest anchored at the scheduler: what a parent's bytes must hash to.
        self.anchored: dict[int, str] = {}
        self._anchors_asked_at = -1e9
        #: Pieces some worker waits to see anchored: every ask includes them, so a worker that
        #: loses the race for the next ask is never starved by askers further along the file.
        self._awaiting_anchor: set[int] = set()
        #: Parents whose SyncPieces could not connect before they said anything: not adopted again,
        #: and named in every reschedule so the scheduler stops offering them.
        self._unreachable_parents: set[str] = set()
        self._named_unreachable: set[str] = set()
        #: When the reschedule the scheduler has not answered yet was sent (None: none is), and the
        #: parents it named: another is sent meanwhile only to name more.
        self._reschedule_asked_at: float | None = None
        self._reschedule_named: set[str] = set()

    def known_unreachable(self, parent_ids: Iterable[str]) -> None:
        """Parents found unreachable before this conversation began (a small task's holders): not
        adopted, and named in the first reschedule."""
        self._unreachable_parents.update(parent_ids)

    # ------------------------------------------------------ conversation
    def _message(self, **request: Any) -> scheduler_pb2.AnnouncePeerRequest:
        return self.schedulers.peer_message(self.task_id, self.peer_id, **request)

    async def _send(self, message: scheduler_pb2.AnnouncePeerRequest) -> None:
        async with self._send_lock:
            stream = self._stream  # read under the lock: the conversation may end while we wait for it
            if stream is None:
                return
            try:
                await stream.send(message)
            except (grpc.RpcError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("task=%s peer=%s event=scheduler_send_failed error=%s", self.task_id, self.peer_id, exc)
                self._conversation_lost()

    def _conversation_lost(self) -> None:
        """The scheduler cannot be told anything more: end this conversation (run() moves on)."""
        self._stream = None
        self._lost = True
        if self._conversation is not None:
            self._conversation.cancel()

    def _give_up_on_scheduler(self) -> None:
        if not self.back_to_source:
            log.warning("task=%s peer=%s event=scheduler_lost action=back_to_source", self.task_id, self.peer_id)
        self._stream = None
        self.back_to_source = True
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def run(self, task: PeerTask, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The AnnouncePeer conversation, for as long as the task downloads (in its background)."""
        meta = task.store.meta
        # Credentials stay here (dffs.security.redact): the scheduler, and any seed it
        # triggers, get the URL without signatures and the headers without secrets.
        download = common_pb2.Download(
            url=shareable_url(self.request.url),
            tag=self.request.tag,
            application=self.request.application,
            piece_length=meta.piece_length,
            request_header=shareable_headers(self.request.headers),
            need_back_to_source=self.settings.seed,
        )
        self._started_status = task_status
        try:
            # The parents' watchers live here, not in one conversation: a task whose scheduler
            # dies keeps its parents while they serve.
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._conversations(task, download)
                # No conversation ever began when no scheduler answered the register: the task may
                # start fetching now (from the origin), or it would wait for its own end forever.
                self._report_started()
                if not task.store.is_complete():
                    self._give_up_on_scheduler()  # no scheduler left: parents it knows, then the origin
                    await task.wait_complete()
                nursery.cancel_scope.cancel()
        except (grpc.RpcError, DffsError) as exc:
            log.info("task=%s peer=%s event=announce_ended error=%s", self.task_id, self.peer_id, exc)
        finally:
            self._report_started()
            if not task.store.is_complete():
                self._give_up_on_scheduler()  # nobody left to ask: the origin it is
            self._stream = None

    async def _conversations(self, task: PeerTask, download: common_pb2.Download) -> None:
        """Talk to the task's schedulers in ring order until a conversation ends for good (the
        task complete, or a scheduler's own answer), or none is left to try."""
        lost = 0
        backoff = FAILOVER_BACKOFF
        while True:
            for address, stub in self.schedulers.ring(self.task_id):
                try:
                    await self._converse(task, stub, download, resumed=lost > 0)
                    return
                except _SchedulerUnreachable:
                    log.warning(
                        "task=%s peer=%s event=scheduler_unreachable scheduler=%s action=next",
                        self.task_id,
                        self.peer_id,
                        address,
                    )
                except _ConversationLost:
                    if task.store.is_complete():
                        return
                    lost += 1
                    self._failing_over = True
                    log.warning(
                        "task=%s peer=%s event=scheduler_failover scheduler=%s lost=%d action=register_again",
                        self.task_id,
                        self.peer_id,
                        address,
                        lost,
                    )
                    break  # walk the ring again from its first: where peers that open the task now go
            else:
                if lost == 0:
                    log.warning("task=%s peer=%s event=no_scheduler action=back_to_source", self.task_id, self.peer_id)
                    return
                lost += 1  # nobody answered since the loss: a restarting scheduler may be back soon
            if lost > MAX_FAILOVERS:
                log.warning("task=%s peer=%s event=failover_gave_up lost=%d", self.task_id, self.peer_id, lost)
                self._failing_over = False
                return
            await trio.sleep(backoff)
            backoff = min(backoff * 2, FAILOVER_BACKOFF_MAX)

    def _report_started(self) -> None:
        """Tell whoever started us (once) that the task may begin fetching."""
        status, self._started_status = self._started_status, None
        if status is not None:
            status.started()

    async def _converse(
        self, task: PeerTask, stub: Stub, download: common_pb2.Download, *, resumed: bool = False
    ) -> None:
        """One AnnouncePeer stream with one scheduler; _SchedulerUnreachable if it never answered,
        _ConversationLost if it went away before the task was complete."""
        self._lost = False
        self._reschedule_asked_at = None  # what the previous scheduler was asked dies with it
        self._reschedule_named.clear()
        async with self.schedulers.announce_peer(stub) as stream:
            self._stream = stream
            self._stub = stub
            await self._send(self._message(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download)))
            try:
                if self._lost:
                    raise _SchedulerUnreachable()
                first = await stream.receive()
            except grpc.RpcError as exc:
                if exc.code() in SCHEDULER_GONE:
                    self._stream = None
                    raise _SchedulerUnreachable() from None
                raise
            self._report_started()
            async with trio.open_nursery() as nursery:
                self._conversation = nursery.cancel_scope
                nursery.start_soon(self._finish_when_complete, task, stream)
                if resumed:
                    self.back_to_source = False  # the new scheduler decides afresh
                    self._failing_over = False
                    log.info("task=%s peer=%s event=registered_again", self.task_id, self.peer_id)
                self._handle(task, first)
                if resumed:
                    await self._report_held(task)
                try:
                    async for response in stream:
                        self._handle(task, response)
                except grpc.RpcError as exc:
                    log.info(
                        "task=%s peer=%s event=announce_ended code=%s detail=%s",
                        self.task_id,
                        self.peer_id,
                        exc.code(),
                        exc.details(),
                    )
                    if exc.code() in SCHEDULER_GONE:
                        self._lost = True
                nursery.cancel_scope.cancel()
            self._conversation = None
            self._stream = None
        if self._lost and not task.store.is_complete():
            self._stub = None  # no anchored digests from there any more: the ones known here stay
            raise _ConversationLost()

    async def _report_held(self, task: PeerTask) -> None:
        """After a failover: the pieces this peer holds, so the new scheduler can offer it as a
        parent. Origin pieces are reported as such (they anchor there, as they did at the first
        scheduler); pieces from a parent never anchor a digest (docs/security.md)."""
        for number in task.store.present_pieces():
            if number in self._from_origin:
                await self._report_piece(task, number, origin=True, parent_id="", seconds=0.0)
            elif number in self._got_from:
                await self._report_piece(task, number, origin=False, parent_id=self._got_from[number], seconds=0.0)

    async def _finish_when_complete(self, task: PeerTask, stream: bridge.BidiStream) -> None:
        await task.wait_complete()
        meta = task.store.meta
        finished = scheduler_pb2.DownloadPeerFinishedRequest(
            content_length=meta.content_length, piece_count=meta.piece_count, **validators_of(meta)
        )
        await self._send(self._message(download_peer_finished_request=finished))
        async with self._send_lock:
            try:
                await stream.done_writing()
            except (grpc.RpcError, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _handle(self, task: PeerTask, response: scheduler_pb2.AnnouncePeerResponse) -> None:
        kind = response.WhichOneof("response")
        self._reschedule_asked_at = None  # one answer serves every reschedule sent before it
        self._reschedule_named.clear()
        if kind == "normal_task_response":
            self._adopt(task, response.normal_task_response.candidate_parents)
            log.info("task=%s peer=%s event=parents count=%d", self.task_id, self.peer_id, len(self.parents))
        elif kind in ("need_back_to_source_response", "empty_task_response"):
            helpers = response.need_back_to_source_response.helpers if kind == "need_back_to_source_response" else ()
            # Helpers: its own children holding pieces it lacks (they could not be parents). On the
            # origin this peer never waits for a parent, so it takes from them what they announce,
            # and waits a moment (SYNC_GRACE) for the announcement of pieces the scheduler says they hold.
            self._adopt(task, helpers)
            self._note_promises(task, helpers)
            log.info(
                "task=%s peer=%s event=back_to_source reason=%s helpers=%d",
                self.task_id,
                self.peer_id,
                kind,
                len(helpers),
            )
            self.back_to_source = True
        self._notify()

    def _adopt(self, task: PeerTask, candidates: Iterable[common_pb2.Peer]) -> None:
        """Watch each usable candidate's pieces (SyncPieces) as a parent of this task."""
        for peer in candidates:
            if peer.id in self.parents or peer.id in self._unreachable_parents:
                continue
            problem = unusable_parent(peer, self.schedulers.host_id)
            if problem is not None:
                log.warning(
                    "task=%s peer=%s event=parent_ignored parent=%.80r reason=%r",
                    self.task_id,
                    self.peer_id,
                    peer.id,
                    problem,
                )
                continue
            parent = Parent(peer.id, peer.host.ip, peer.host.port, peer.host.download_port)
            parent.added_at = trio.current_time()
            self.parents[peer.id] = parent
            assert self._nursery is not None
            self._nursery.start_soon(self._watch, parent, task.store.meta.piece_count)

    def _note_promises(self, task: PeerTask, helpers: Iterable[common_pb2.Peer]) -> None:
        """Remember which pieces each helper holds by the scheduler's word (bounded by the task)."""
        count = task.store.meta.piece_count
        now = trio.current_time()
        for helper in helpers:
            parent = self.parents.get(helper.id)
            if parent is None or not helper.pieces:
                continue
            parent.promised = frozenset(p.number for p in helper.pieces[:count] if p.number < count)
            parent.promised_at = now

    async def _watch(self, parent: Parent, piece_count: int) -> None:
        """Learn a parent's pieces as it gets them (SyncPieces). What a parent says is checked: a
        piece outside the task or a malformed digest is ignored, and a parent that keeps saying
        such things is dropped."""
        request = dfdaemon_pb2.SyncPiecesRequest(host_id=self.schedulers.host_id, task_id=self.task_id)
        nonsense = 0
        try:
            async with bridge.open_unary_stream(
                self.swarm.upload_stub(parent.ip, parent.port).SyncPieces, request
            ) as stream:
                async for piece in stream:
                    if not 0 <= piece.number < piece_count or not is_piece_digest(piece.digest):
                        nonsense += 1
                        log.warning(
                            "task=%s parent=%s event=parent_nonsense piece=%d digest=%.80r",
                            self.task_id,
                            parent.id,
                            piece.number,
                            piece.digest,
                        )
                        if nonsense >= MAX_PARENT_FAILURES:
                            parent.failures = MAX_PARENT_FAILURES
                            break
                        continue
                    parent.pieces[piece.number] = piece.digest
                    self._notify()
        except grpc.RpcError as exc:
            log.info("task=%s parent=%s event=sync_ended code=%s", self.task_id, parent.id, exc.code())
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not parent.pieces:
                # Nobody answers there (a host gone, its daemon stopped): the next reschedule asks the
                # scheduler not to offer it again, rather than getting it back round after round.
                self._unreachable_parents.add(parent.id)
        except trio.EndOfChannel:
            pass
        if not parent.pieces:
            self.parents.pop(parent.id, None)  # useless so far: may be offered again later
            if parent.id in self._unreachable_parents:
                self._notify()  # a fetch waiting on it can reschedule now

    # ---------------------------------------------------------- fetching
    async def _anchor(self, task: PeerTask, number: int) -> str | None:
        """The scheduler's digest for piece ``number`` (None: not anchored yet, or no scheduler)."""
        if number in self.anchored or self._stub is None:
            return self.anchored.get(number)
        self._awaiting_anchor.add(number)
        now = trio.current_time()
        if now - self._anchors_asked_at < ANCHOR_REFRESH:
            return None
        self._anchors_asked_at = now
        count = task.store.meta.piece_count
        wanted = sorted(self._awaiting_anchor)[:ANCHOR_BATCH]
        # From this piece on, then the ones before it: every anchor known here is one a failover
        # does not need the next scheduler for.
        order = itertools.chain(range(number, count), range(number))
        ahead = (n for n in order if n not in self.anchored and n not in self._awaiting_anchor)
        wanted += itertools.islice(ahead, ANCHOR_BATCH - len(wanted))
        try:
            self.anchored.update(await self.schedulers.piece_digests(self._stub, self.task_id, wanted))
        except grpc.RpcError as exc:
            log.info(
                "task=%s peer=%s event=anchored_digests_unavailable code=%s", self.task_id, self.peer_id, exc.code()
            )
        self._awaiting_anchor.difference_update(self.anchored)
        return self.anchored.get(number)

    async def fetch(self, task: PeerTask, number: int, buffer: memoryview) -> tuple[bool, bytes | None]:
        """Piece ``number`` from a parent — its bytes checked against the digest anchored at the
        scheduler, not only the parent's word — or from the origin when none can serve it.

        Going back to source (the scheduler's answer, no scheduler left, no parent in time) is
        for the pieces no usable parent has announced: one that has, with a digest known here,
        still serves, so a task that lost its scheduler costs the origin only what the swarm
        does not hold."""
        rounds = 0
        unanchored_since: float | None = None
        origin_now = False  # this piece: no anchored digest in time
        while True:
            changed = self._changed
            parent = None if origin_now else pick_parent(self.parents.values(), number)
            if parent is not None and self.back_to_source and number not in self.anchored and self._stream is None:
                parent = None  # no scheduler to anchor it: the origin
            if parent is not None:
                anchor = await self._anchor(task, number)
                if anchor is None:
                    # Not anchored (yet): no parent's bytes can be checked. A report may be in
                    # flight, or a failover under way; past parent_wait of a conversation, the origin.
                    if self._failing_over:
                        unanchored_since = None
                        await trio.sleep(ANCHOR_REFRESH)
                        continue
                    now = trio.current_time()
                    unanchored_since = unanchored_since if unanchored_since is not None else now
                    if now - unanchored_since < self.settings.parent_wait:
                        await trio.sleep(ANCHOR_REFRESH)
                        continue
                    log.warning("task=%s piece=%d event=piece_not_anchored action=back_to_source", task.task_id, number)
                    self.back_to_source = True
                    origin_now = True
                    continue
                if parent.pieces.get(number) != anchor:
                    self._drop_piece(
                        parent,
                        number,
                        f"parent announced digest {parent.pieces.get(number)}, the scheduler anchored {anchor}",
                    )
                    await self._report_failure(
                        number, parent, "announced digest differs from the anchored one", temporary=False
                    )
                    continue
                parent.active += 1
                asked = trio.current_time()
                try:
                    digest = await self.swarm.piece_client.fetch(
                        parent.ip,
                        parent.download_port,
                        task.task_id,
                        number,
                        buffer,
                        expected_digest=anchor,
                    )
                except PeerError as exc:
                    parent.failures += 1 if exc.retryable else MAX_PARENT_FAILURES
                    parent.pieces.pop(number, None)
                    log.warning(
                        "task=%s piece=%d parent=%s event=piece_from_parent_failed error=%s",
                        task.task_id,
                        number,
                        parent.id,
                        exc,
                    )
                    await self._report_failure(
                        number,
                        parent,
                        str(exc),
                        temporary=exc.retryable,
                        unreachable=isinstance(exc, ParentUnreachable),
                    )
                    continue
                finally:
                    parent.active -= 1
                parent.delivered(trio.current_time() - asked, len(buffer))
                self._piece_parent[number] = parent.id
                return False, digest
            if self.back_to_source or origin_now:
                settling = self._settling(number)
                if settling > 0 and not origin_now:
                    # A parent just given has not said what it holds yet, or a helper has not yet
                    # announced this piece the scheduler says it holds: a moment for its SyncPieces
                    # before the origin is asked for what it may hold.
                    with trio.move_on_after(settling):
                        await changed.wait()
                    continue
                await task.fetch_from_origin(number, buffer)
                return True, None
            # Every parent given is unreachable and the scheduler has not heard so: ask again now, not
            # after parent_wait (a stale parent list costs a round trip, not seconds).
            unheard = not self.parents and not self._unreachable_parents <= self._named_unreachable
            with trio.move_on_after(0 if unheard else self.settings.parent_wait) as waited:
                await changed.wait()
            if not unheard and (not waited.cancelled_caught or self._failing_over):
                rounds = 0  # progress somewhere (new pieces, parents, a decision), or a new scheduler soon
            else:
                if not unheard:
                    rounds += 1  # also while a reschedule is unanswered: a scheduler that never answers costs this much
                if rounds >= self.settings.parent_rounds:
                    log.warning("task=%s piece=%d event=no_parent_serves action=back_to_source", task.task_id, number)
                    self.back_to_source = True
                    continue
                avoid = sorted({p.id for p in self.parents.values() if not p.usable} | self._unreachable_parents)
                if self._awaiting_reschedule() and self._reschedule_named.issuperset(avoid):
                    continue  # nothing to add to the question the scheduler is working on
                self._named_unreachable |= self._unreachable_parents
                self._reschedule_named.update(avoid)
                self._reschedule_asked_at = trio.current_time()
                await self._send(
                    self._message(
                        reschedule_request=scheduler_pb2.RescheduleRequest(
                            candidate_parents=[common_pb2.Peer(id=i) for i in avoid],
                            description=f"no parent has piece {number}",
                        )
                    )
                )

    def _awaiting_reschedule(self) -> bool:
        """A reschedule sent on the live conversation is not answered yet (and not overdue)."""
        asked = self._reschedule_asked_at
        return asked is not None and self._stream is not None and trio.current_time() - asked < RESCHEDULE_PATIENCE

    def _settling(self, number: int) -> float:
        """Seconds until every parent adopted in the last SYNC_GRACE has announced a piece, and
        every helper said to hold piece ``number`` has announced it, or had its grace (0: none is
        settling)."""
        now = trio.current_time()
        waits = [0.0]
        for p in self.parents.values():
            if not p.usable or number in p.pieces:
                continue
            if not p.pieces:
                waits.append(p.added_at + SYNC_GRACE - now)
            elif number in p.promised:
                waits.append(p.promised_at + SYNC_GRACE - now)
        return max(waits)

    def _drop_piece(self, parent: Parent, number: int, why: str) -> None:
        """A parent that says wrong things about a piece is not asked again."""
        parent.failures = MAX_PARENT_FAILURES
        parent.pieces.pop(number, None)
        log.warning("task=%s piece=%d parent=%s event=parent_dropped reason=%r", self.task_id, number, parent.id, why)

    async def _report_failure(
        self, number: int, parent: Parent, description: str, *, temporary: bool, unreachable: bool = False
    ) -> None:
        failed = scheduler_pb2.DownloadPieceFailedRequest(
            piece_number=number,
            parent_id=parent.id,
            temporary=temporary,
            description=description,
            unreachable=unreachable,
        )
        await self._send(self._message(download_piece_failed_request=failed))

    def choose(self, candidates: list[int]) -> int:
        """Rarest first among pieces some parent has (:func:`choose_piece`)."""
        return choose_piece(candidates, list(self.parents.values()), self._random, in_order=self.back_to_source)

    async def stored(self, task: PeerTask, number: int, origin: bool, seconds: float) -> None:
        parent_id = "" if origin else self._piece_parent.pop(number, "")
        if origin:
            self._from_origin.add(number)
        elif parent_id:
            self._got_from[number] = parent_id
        await self._report_piece(task, number, origin=origin, parent_id=parent_id, seconds=seconds)

    async def _report_piece(self, task: PeerTask, number: int, *, origin: bool, parent_id: str, seconds: float) -> None:
        span = task.store.span(number)
        digest = task.store.piece_digest(number)
        piece = common_pb2.Piece(
            number=number,
            offset=span.offset,
            length=span.length,
            digest=format_piece_digest(digest) if digest else "",
            parent_id=parent_id,
        )
        piece.cost.FromNanoseconds(int(seconds * 1e9))
        if origin:
            await self._send(
                self._message(
                    download_piece_back_to_source_finished_request=(
                        scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
                    )
                )
            )
        else:
            await self._send(
                self._message(download_piece_finished_request=(scheduler_pb2.DownloadPieceFinishedRequest(piece=piece)))
            )


__all__ = ["P2PFetcher", "P2PSettings", "P2PSwarm"]
