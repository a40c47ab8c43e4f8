"""Small files over P2P without a scheduler conversation each (issue 13 part 3).

A dataset directory is thousands of one-piece tasks. Through
:class:`~dffs.daemon.p2p.P2PFetcher` each costs an AnnouncePeer stream
(register, wait for parents, report the piece, report finished), a SyncPieces
stream to a parent and a GetPieceDigests call: several round trips and gRPC
streams per file, where the file itself is one HTTP GET.

Here the cost is amortized over the directory:

1. When the mount lists a directory it asks the swarm what it knows of the
   directory's files in one StatTasks call (``holders_per_task``); for each
   one-piece task some member holds, the scheduler names a few holders and the
   digest anchored for the piece where its bytes entered the cluster. They are
   kept in :class:`HolderHints` for a while.
2. A task opened with a fresh hint gets a :class:`HintedFetcher`: its piece
   comes straight from a holder over the piece client's keep-alive
   connections, checked against the anchored digest (never the holder's word,
   as for any parent: docs/security.md). No scheduler is asked.
3. Once the task is complete, this host is registered as a finished peer of
   it by :class:`FinishedRegistrations`: many tasks per AnnounceFinishedTasks
   call, so a directory of small files costs a few calls, not a stream each.

Anything unusual — no holder answers, the hint is for other content (its
size differs from what the task was opened with), the task is not one piece
— falls back to the ordinary conversation, which knows how to find parents,
trigger a seed or go to the origin.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any

import grpc
import trio

from dffs.api import common_pb2, scheduler_pb2
from dffs.daemon.holders import Hint, HolderHints
from dffs.daemon.schedulers import SchedulerClient, validators_of
from dffs.digest import format_piece_digest
from dffs.peertask import DownloadRequest, PeerTask
from dffs.security.redact import shareable_headers, shareable_url
from dffs.upload.client import ParentUnreachable, PeerError

if TYPE_CHECKING:
    from dffs.daemon.p2p import P2PSwarm

log = logging.getLogger(__name__)

#: Holders asked for per task (a second and third one cover a holder that evicted it or is gone).
HOLDERS_PER_TASK = 3
#: Tasks per AnnounceFinishedTasks call (the scheduler takes up to 1,000).
REGISTRATION_BATCH = 500
#: Seconds a registration waits for others to share its call (files opened around the same time).
REGISTRATION_LINGER = 0.05
#: Registrations waiting at most; past that, a task is not registered (the swarm only misses a holder).
MAX_WAITING_REGISTRATIONS = 100_000
#: How an AnnounceFinishedTasks call may fail that means "try the next scheduler of the ring".
_SCHEDULER_GONE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


class _Started:
    """A ``task_status`` that sets an event (the fallback conversation's "pieces may be asked for")."""

    def __init__(self, event: trio.Event):
        self._event = event

    def started(self, value: Any = None) -> None:
        self._event.set()


class HintedFetcher:
    """The one piece of a small task from a holder a hint named; the conversation if that fails
    (a :class:`dffs.peertask.PieceFetcher`)."""

    from_origin_only = False
    runs_in_background = True

    def __init__(self, swarm: P2PSwarm, request: DownloadRequest, hint: Hint, registrations: FinishedRegistrations):
        self.swarm = swarm
        self.request = request
        self.task_id = request.task_id
        self.hint = hint
        self.registrations = registrations
        #: (holder peer id, seconds) once the piece came from a holder.
        self.got_from: tuple[str, float] | None = None
        self._fallback: Any = None  # a P2PFetcher once the hint failed
        self._fallback_wanted = trio.Event()
        self._fallback_ready = trio.Event()
        #: Holders that could not be reached: the conversation does not try them again.
        self._unreachable: list[str] = []

    def _fits(self, task: PeerTask) -> bool:
        meta = task.store.meta
        return meta.piece_count == 1 and meta.content_length == self.hint.content_length

    async def run(self, task: PeerTask, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self._fits(task):
            log.info("task=%s event=holder_hint_unfit action=conversation", self.task_id)
            self._fallback_wanted.set()
        task_status.started()
        async with trio.open_nursery() as nursery:

            async def completed() -> None:
                await task.wait_complete()
                nursery.cancel_scope.cancel()

            nursery.start_soon(completed)
            await self._fallback_wanted.wait()
            nursery.cancel_scope.cancel()
        if not self._fallback_wanted.is_set():
            if self.got_from is not None:
                self.registrations.add(self._finished(task, *self.got_from))
            return
        self._fallback = self.swarm.conversation(self.request)
        self._fallback.known_unreachable(self._unreachable)
        await self._fallback.run(task, task_status=_Started(self._fallback_ready))

    async def fetch(self, task: PeerTask, number: int, buffer: memoryview) -> tuple[bool, bytes | None]:
        if not self._fallback_wanted.is_set():
            for holder in self.hint.holders:
                asked = trio.current_time()
                try:
                    digest = await self.swarm.piece_client.fetch(
                        holder.ip,
                        holder.download_port,
                        self.task_id,
                        number,
                        buffer,
                        expected_digest=self.hint.piece_digest,
                    )
                except PeerError as exc:
                    log.info("task=%s holder=%s event=holder_failed error=%s", self.task_id, holder.id, exc)
                    if isinstance(exc, ParentUnreachable):
                        self._unreachable.append(holder.id)
                    continue
                self.got_from = (holder.id, trio.current_time() - asked)
                return False, digest
            log.info(
                "task=%s event=holders_failed holders=%d action=conversation", self.task_id, len(self.hint.holders)
            )
            self._fallback_wanted.set()
        await self._fallback_ready.wait()
        return await self._fallback.fetch(task, number, buffer)

    async def stored(self, task: PeerTask, number: int, origin: bool, seconds: float) -> None:
        if self._fallback is not None:
            await self._fallback.stored(task, number, origin, seconds)

    def choose(self, candidates: list[int]) -> int:
        if self._fallback is not None:
            return self._fallback.choose(candidates)
        return candidates[0]

    def _finished(self, task: PeerTask, holder_id: str, seconds: float) -> scheduler_pb2.FinishedTask:
        """This host as a finished peer of the task, its piece from ``holder_id``."""
        meta = task.store.meta
        digest = task.store.piece_digest(0)
        piece = common_pb2.Piece(
            number=0,
            offset=0,
            length=meta.content_length,
            digest=format_piece_digest(digest) if digest else "",
            parent_id=holder_id,
            traffic_type=common_pb2.TRAFFIC_TYPE_REMOTE_PEER,
        )
        piece.cost.FromNanoseconds(int(seconds * 1e9))
        return scheduler_pb2.FinishedTask(
            task_id=self.task_id,
            peer_id=self.swarm.schedulers.new_peer_id(self.task_id),
            # Credentials stay here, as in every conversation (dffs.security.redact).
            download=common_pb2.Download(
                url=shareable_url(self.request.url),
                tag=self.request.tag,
                application=self.request.application,
                piece_length=meta.piece_length,
                request_header=shareable_headers(self.request.headers),
            ),
            content_length=meta.content_length,
            piece_count=1,
            pieces=[piece],
            **validators_of(meta),
        )


class FinishedRegistrations:
    """Whole tasks to register as finished peers of this host, sent many per call.

    :meth:`add` never waits; :meth:`run` (the daemon's nursery) sends what waits every
    ``linger`` seconds at most, ``batch`` per AnnounceFinishedTasks call, each task to the first
    scheduler of its ring and, when that one is gone, to the next reachable one."""

    def __init__(
        self,
        schedulers: SchedulerClient,
        *,
        batch: int = REGISTRATION_BATCH,
        linger: float = REGISTRATION_LINGER,
        backlog: int = MAX_WAITING_REGISTRATIONS,
    ):
        self.schedulers = schedulers
        self.batch = batch
        self.linger = linger
        self.backlog = backlog
        self.running = False
        self._waiting: collections.deque[scheduler_pb2.FinishedTask] = collections.deque()
        self._wake = trio.Event()
        #: For logs, metrics and tests.
        self.registered = 0
        self.refused = 0
        self.calls = 0

    def add(self, entry: scheduler_pb2.FinishedTask) -> bool:
        if not self.running or len(self._waiting) >= self.backlog:
            log.info("task=%s event=registration_dropped running=%s", entry.task_id, self.running)
            return False
        self._waiting.append(entry)
        self._wake.set()
        return True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(self.linger)  # a batching window: the directory's other files are close behind
                while self._waiting:
                    entries = [self._waiting.popleft() for _ in range(min(self.batch, len(self._waiting)))]
                    await self._send(entries)
        finally:
            self.running = False

    async def _send(self, entries: list[scheduler_pb2.FinishedTask]) -> None:
        """Each entry to the first scheduler of its ring that takes the call."""
        rings = {e.task_id: [a for a, _ in self.schedulers.ring(e.task_id)] for e in entries}
        todo = entries
        attempt = 0
        while todo:
            by_address: dict[str, list[scheduler_pb2.FinishedTask]] = {}
            for entry in todo:
                ring = rings[entry.task_id]
                if attempt < len(ring):
                    by_address.setdefault(ring[attempt], []).append(entry)
            if not by_address:
                log.warning("event=registrations_lost tasks=%d reason='no scheduler took them'", len(todo))
                return
            todo = []
            for address, group in by_address.items():
                self.calls += 1
                try:
                    refused = await self.schedulers.announce_finished_tasks(address, group)
                except grpc.RpcError as exc:
                    log.info(
                        "event=registrations_failed scheduler=%s tasks=%d code=%s", address, len(group), exc.code()
                    )
                    if exc.code() in _SCHEDULER_GONE:
                        todo.extend(group)  # the next scheduler of each task's ring
                    continue
                self.registered += len(group) - len(refused)
                self.refused += len(refused)
                log.info(
                    "event=finished_tasks_registered scheduler=%s tasks=%d refused=%d",
                    address,
                    len(group) - len(refused),
                    len(refused),
                )
                for task_id, why in list(refused.items())[:3]:
                    log.info("task=%s event=registration_refused scheduler=%s reason=%r", task_id[:80], address, why)
            attempt += 1


__all__ = ["FinishedRegistrations", "HintedFetcher", "HolderHints"]
