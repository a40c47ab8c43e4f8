"""Every call this daemon makes to schedulers: one module, so the rules live in one place.

* **Which scheduler** serves a task: rendezvous hashing of the task ID over the
  current addresses (:meth:`SchedulerClient.ring`), so every daemon picks the
  same one and a dead one's tasks spread over the rest.
* **Peer IDs**: :meth:`SchedulerClient.new_peer_id`, the one format.
* **Membership**: one gRPC channel and one host-announcement loop per
  scheduler; the set may change while the daemon runs (``--manager``): tasks
  opened after an update use the new set, a task talking to a removed
  scheduler loses its stream and finishes from the origin.
* **Calls about tasks**: the AnnouncePeer stream of a download (the
  conversation itself is the P2P fetcher's), registering an imported task as a
  finished peer, asking what the swarm knows of a task, and reporting deletions
  and GC evictions so no child is sent here for pieces that are gone.
* **Schedulers that forget**: an AnnounceHost answered ``host_known = false``
  (the scheduler restarted, or forgot this host) or a scheduler that stops
  answering is reported on :meth:`SchedulerClient.forgetful`, so the finished
  tasks this host holds can be registered again where peers will look for them
  (:mod:`dffs.daemon.finished`).

A daemon without schedulers has a client with no addresses: every call then
does nothing, so callers never check whether P2P is on.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import trio
from google.protobuf import timestamp_pb2

from dffs.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from dffs.bounds import check_size
from dffs.daemon.holders import Hint, parse_holders
from dffs.digest import format_piece_digest, is_piece_digest
from dffs.gc.service import GcResult
from dffs.peertask import DownloadRequest
from dffs.rpc import bridge
from dffs.source import SourceStat
from dffs.storage import TaskMeta, TaskStore

log = logging.getLogger(__name__)

#: Longest a unary call to a scheduler may take.
CALL_TIMEOUT = 10.0

Stub = scheduler_pb2_grpc.SchedulerStub
ChannelFactory = Callable[[str], grpc.Channel]


#: Task IDs per StatTasks call (the scheduler takes up to 10,000).
STAT_BATCH = 5000

#: What :meth:`SchedulerClient.forgetful` reports about a scheduler.
FORGOT = "forgot"  # it answers, but knows nothing of this host's tasks
LOST = "lost"  # it stopped answering: its tasks are looked up on the next one of their ring
FORGETFUL_BACKLOG = 64


class SchedulerRemoved(grpc.RpcError):
    """The scheduler was taken out of this daemon's set (the manager's update) before a call to it:
    a call that cannot be made, like one whose channel was closed under it (CANCELLED)."""

    def __init__(self, address: str):
        super().__init__(f"scheduler {address} was removed")
        self.address = address

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return str(self)


def validators_of(meta: TaskMeta) -> dict[str, str]:
    """The origin's validators a task was opened with, as the proto fields a finished peer reports."""
    values = {"etag": meta.etag, "last_modified": meta.last_modified, "content_type": meta.content_type}
    return {k: v for k, v in values.items() if v}


#: Longest origin validator taken from a scheduler (the scheduler bounds them the same way).
MAX_SWARM_VALIDATOR = 1024


def swarm_stat(url: str, task: common_pb2.Task) -> SourceStat | None:
    """A scheduler's Task as the stat of ``url``, when some peer can serve the content.

    Bounded like anything parsed from the network: an absurd size or validator is no answer
    (None, so the origin is asked), never the object's metadata."""
    if not (task.HasField("content_length") and task.has_available_peer):
        return None
    validators = {}
    for name in ("etag", "last_modified", "content_type"):
        if task.HasField(name):
            value = getattr(task, name)
            if len(value) > MAX_SWARM_VALIDATOR or any(c in value for c in "\r\n\x00"):
                log.warning("task=%s event=swarm_stat_refused reason=bad_%s", task.id[:80], name)
                return None
            validators[name] = value
    try:
        size = check_size(task.content_length)
    except ValueError as exc:
        log.warning("task=%s event=swarm_stat_refused reason=size error=%s", task.id[:80], exc)
        return None
    return SourceStat(url=url, content_length=size, accepts_ranges=True, **validators)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for ``seconds`` since the epoch."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class SchedulerClient:
    def __init__(
        self,
        host_id: str,
        addresses: Iterable[str] = (),
        *,
        announce_interval: float = 10.0,
        channel_factory: ChannelFactory,
    ):
        self.host_id = host_id
        self.announce_interval = announce_interval
        self._channel_factory = channel_factory
        #: address -> stub, in the order given (the manager's ranking).
        self._stubs: dict[str, Stub] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._loops: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._host: common_pb2.Host | None = None
        #: Addresses whose last AnnounceHost failed.
        self._unreachable: set[str] = set()
        #: Bounded: the events are hints (a repeat changes nothing), dropped when nobody listens.
        self._forgetful_send, self._forgetful_receive = trio.open_memory_channel[tuple[str, str]](FORGETFUL_BACKLOG)
        self.update(addresses)

    # ---------------------------------------------------------- membership
    @property
    def addresses(self) -> list[str]:
        return list(self._stubs)

    def update(self, addresses: Iterable[str]) -> bool:
        """Talk to exactly ``addresses`` from now on; True when the set changed."""
        wanted = list(dict.fromkeys(addresses))
        if wanted == list(self._stubs):
            return False
        for address in [a for a in self._stubs if a not in wanted]:
            scope = self._loops.pop(address, None)
            if scope is not None:
                scope.cancel()
            del self._stubs[address]
            self._unreachable.discard(address)
            self._channels.pop(address).close()
            log.info("host=%s event=scheduler_removed scheduler=%s", self.host_id, address)
        stubs = {}
        for address in wanted:
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._channels[address] = self._channel_factory(address)
                stub = Stub(channel)
                self._start_announcing(address, stub)
                log.info("host=%s event=scheduler_added scheduler=%s", self.host_id, address)
            stubs[address] = stub
        self._stubs = stubs
        return True

    async def run(self, host: common_pb2.Host, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Announce ``host`` to every scheduler every interval until cancelled (a restarted
        scheduler relearns it within one); the channels are closed when this ends."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery, self._host = nursery, host
                for address, stub in self._stubs.items():
                    self._start_announcing(address, stub)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for scope in self._loops.values():
                scope.cancel()
            for channel in self._channels.values():
                channel.close()
            self._loops.clear()
            self._channels.clear()
            self._stubs.clear()

    def _start_announcing(self, address: str, stub: Stub) -> None:
        if self._nursery is None or address in self._loops:
            return  # before run(): run starts it
        self._loops[address] = scope = trio.CancelScope()
        self._nursery.start_soon(self._announce_host, scope, address, stub)

    async def _announce_host(self, scope: trio.CancelScope, address: str, stub: Stub) -> None:
        assert self._host is not None
        request = scheduler_pb2.AnnounceHostRequest(host=self._host)
        request.interval.FromNanoseconds(int(self.announce_interval * 1e9))
        with scope:
            while True:
                try:
                    answer = await bridge.unary(stub.AnnounceHost, request, timeout=5)
                except grpc.RpcError as exc:
                    log.warning(
                        "host=%s event=announce_host_failed scheduler=%s code=%s", self.host_id, address, exc.code()
                    )
                    if address not in self._unreachable:
                        self._unreachable.add(address)
                        self._hint((LOST, address))
                else:
                    self._unreachable.discard(address)
                    if not answer.host_known:
                        log.info("host=%s event=scheduler_forgot_host scheduler=%s", self.host_id, address)
                        self._hint((FORGOT, address))
                await trio.sleep(self.announce_interval)

    def _hint(self, event: tuple[str, str]) -> None:
        try:
            self._forgetful_send.send_nowait(event)
        except trio.WouldBlock:
            pass

    async def forgetful(self) -> AsyncIterator[tuple[str, str]]:
        """``(FORGOT, address)`` when a scheduler answers without knowing this host (its first
        announce after a start — the scheduler's or this daemon's — or after the host expired
        there); ``(LOST, address)`` when one stops answering. For one consumer."""
        async for event in self._forgetful_receive:
            yield event

    def reachable(self, address: str) -> bool:
        """False while the last AnnounceHost to ``address`` failed."""
        return address in self._stubs and address not in self._unreachable

    # ------------------------------------------------------------ routing
    def ring(self, task_id: str) -> list[tuple[str, Stub]]:
        """Schedulers in the order this task tries them (rendezvous hashing on the task ID)."""
        order = sorted(
            self._stubs, key=lambda addr: hashlib.sha256(f"{task_id}|{addr}".encode()).digest(), reverse=True
        )
        return [(addr, self._stubs[addr]) for addr in order]

    def new_peer_id(self, task_id: str) -> str:
        """A fresh peer ID for this host's download of ``task_id``: host, task, then a random part."""
        return f"{self.host_id[:12]}-{task_id[:12]}-{uuid.uuid4().hex[:12]}"

    def peer_message(self, task_id: str, peer_id: str, **request: Any) -> scheduler_pb2.AnnouncePeerRequest:
        return scheduler_pb2.AnnouncePeerRequest(host_id=self.host_id, task_id=task_id, peer_id=peer_id, **request)

    @asynccontextmanager
    async def announce_peer(self, stub: Stub) -> AsyncIterator[bridge.BidiStream]:
        """One AnnouncePeer stream (the conversation is the caller's: dffs.daemon.p2p)."""
        async with bridge.open_bidi_stream(stub.AnnouncePeer) as stream:
            yield stream

    # ------------------------------------------------------ task reports
    async def announce_import(self, store: TaskStore, *, to: Iterable[str] | None = None) -> bool:
        """Register a complete task (imported, or held when a scheduler forgot this host) as a
        finished peer at its scheduler — the first of its ring that takes it, or of ``to`` —
        pieces reported as if fetched from the origin, with their digests (why that is safe:
        docs/security.md); True when one took it."""
        entry = self.held_task_entry(store)
        tid = entry.task_id
        targets = [a for a, _ in self.ring(tid)] if to is None else list(to)
        for address in targets:
            try:
                refused = await self.announce_finished_tasks(address, [entry])
            except grpc.RpcError as exc:
                log.warning("task=%s event=import_announce_failed scheduler=%s error=%s", tid, address, exc.details())
                continue
            if tid in refused:
                log.warning("task=%s event=import_announce_refused scheduler=%s reason=%r", tid, address, refused[tid])
                continue
            log.info("task=%s peer=%s event=import_announced scheduler=%s", tid, entry.peer_id, address)
            return True
        return False

    def held_task_entry(self, store: TaskStore) -> scheduler_pb2.FinishedTask:
        """A complete task this host holds as one entry of AnnounceFinishedTasks (an import, or a
        task held when a scheduler forgot this host): every piece as from the origin, with its digest."""
        meta = store.meta
        tid = meta.task_id
        entry = scheduler_pb2.FinishedTask(
            task_id=tid,
            peer_id=self.new_peer_id(tid),
            download=common_pb2.Download(
                url=meta.url,
                tag=meta.tag,
                application=meta.application,
                piece_length=meta.piece_length,
                need_back_to_source=True,
            ),
            content_length=meta.content_length,
            piece_count=meta.piece_count,
        )
        for name, value in validators_of(meta).items():
            setattr(entry, name, value)
        for number in store.present_pieces():
            span = store.span(number)
            digest = store.piece_digest(number)
            entry.pieces.add(
                number=number,
                offset=span.offset,
                length=span.length,
                digest=format_piece_digest(digest) if digest else "",
            )
        return entry

    async def piece_digests(self, stub: Stub, task_id: str, numbers: list[int]) -> dict[int, str]:
        """The digests the scheduler anchored for these pieces (where their bytes entered the
        cluster); malformed answers are dropped. Raises grpc.RpcError."""
        answer = await bridge.unary(
            stub.GetPieceDigests,
            scheduler_pb2.GetPieceDigestsRequest(host_id=self.host_id, task_id=task_id, piece_numbers=numbers),
            timeout=CALL_TIMEOUT,
        )
        return {n: d for n, d in answer.digests.items() if is_piece_digest(d)}

    async def stat_task(self, request: DownloadRequest) -> SourceStat | None:
        """What the swarm knows of the object (size and the origin's validators, as the peer that
        fetched it reported them) when some peer holds it; None otherwise."""
        tid = request.task_id
        for address, stub in self.ring(tid):
            try:
                task = await bridge.unary(
                    stub.StatTask,
                    scheduler_pb2.StatTaskRequest(host_id=self.host_id, task_id=tid),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as exc:
                # NOT_FOUND too: the task may have been registered with the next one while this was away.
                log.info("task=%s event=swarm_stat_failed scheduler=%s code=%s", tid, address, exc.code())
                continue
            return swarm_stat(request.url, task)
        return None

    async def stat_tasks(
        self, requests: Iterable[DownloadRequest], *, holders_per_task: int = 0
    ) -> tuple[dict[str, SourceStat], dict[str, Hint]]:
        """:meth:`stat_task` for many tasks: one StatTasks call per scheduler (a directory's files are
        spread over the schedulers by their task IDs), so a listing costs a round trip, not one per file.
        Tasks no peer holds, or whose scheduler cannot be reached, are left out. With
        ``holders_per_task``, also who holds each small (one-piece) task: hints for
        :mod:`dffs.daemon.small_tasks`."""
        by_scheduler: dict[str, list[DownloadRequest]] = {}
        for request in requests:
            ring = self.ring(request.task_id)
            if ring:
                by_scheduler.setdefault(ring[0][0], []).append(request)
        found: dict[str, SourceStat] = {}
        hints: dict[str, Hint] = {}

        async def ask(address: str, batch: list[DownloadRequest]) -> None:
            urls = {r.task_id: r.url for r in batch}
            stub = self._stubs.get(address)
            if stub is None:
                return
            for start in range(0, len(batch), STAT_BATCH):
                ids = [r.task_id for r in batch[start : start + STAT_BATCH]]
                try:
                    answer = await bridge.unary(
                        stub.StatTasks,
                        scheduler_pb2.StatTasksRequest(
                            host_id=self.host_id, task_ids=ids, holders_per_task=holders_per_task
                        ),
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.RpcError as exc:
                    log.info(
                        "event=swarm_stat_batch_failed scheduler=%s tasks=%d code=%s", address, len(ids), exc.code()
                    )
                    return
                tasks = {}
                for task in answer.tasks:
                    url = urls.get(task.id)
                    stat = swarm_stat(url, task) if url is not None else None
                    if stat is not None:
                        found[task.id] = stat
                        tasks[task.id] = task
                now = trio.current_time()
                for entry in answer.holders:
                    hint = parse_holders(entry, tasks.get(entry.task_id), self.host_id, now)
                    if hint is not None:
                        hints[entry.task_id] = hint

        async with trio.open_nursery() as nursery:
            for address, batch in by_scheduler.items():
                nursery.start_soon(ask, address, batch)
        return found, hints

    async def announce_finished_tasks(self, address: str, entries: list[scheduler_pb2.FinishedTask]) -> dict[str, str]:
        """Register these whole tasks of this host as finished peers at the scheduler ``address``, in
        one call; the ones it refused, with why. Raises grpc.RpcError (the caller picks another)."""
        stub = self._stubs.get(address)
        if stub is None:
            raise SchedulerRemoved(address)
        answer = await bridge.unary(
            stub.AnnounceFinishedTasks,
            scheduler_pb2.AnnounceFinishedTasksRequest(host_id=self.host_id, tasks=entries),
            timeout=CALL_TIMEOUT,
        )
        return dict(answer.refused)

    async def delete_task(self, task_id: str) -> None:
        """This host no longer holds ``task_id``."""
        for address, stub in self.ring(task_id)[:1]:
            try:
                await bridge.unary(
                    stub.DeleteTask,
                    scheduler_pb2.DeleteTaskRequest(host_id=self.host_id, task_id=task_id),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.info("task=%s event=scheduler_delete_failed scheduler=%s code=%s", task_id, address, exc.code())

    async def delete_pieces(self, task_id: str, numbers: Iterable[int]) -> None:
        """This host no longer holds these pieces of ``task_id``."""
        for address, stub in self.ring(task_id)[:1]:
            try:
                await bridge.unary(
                    stub.DeletePieces,
                    scheduler_pb2.DeletePiecesRequest(host_id=self.host_id, task_id=task_id, piece_numbers=numbers),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "task=%s event=scheduler_delete_pieces_failed scheduler=%s code=%s",
                        task_id,
                        address,
                        exc.code(),
                    )

    async def report_evictions(self, result: GcResult) -> None:
        """Tell each task's scheduler what the GC took from this host."""
        for task_id in result.evicted_tasks:
            await self.delete_task(task_id)
        for task_id, numbers in result.evicted_pieces:
            await self.delete_pieces(task_id, numbers)
