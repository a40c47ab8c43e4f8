"""Downloading a task from other peers: the AnnouncePeer conversation and parent choice.

One ``P2PFetcher`` per peer task, installed as the PeerTask's fetcher. It
registers the task with the scheduler, learns each candidate parent's pieces
through a ``SyncPieces`` stream, fetches every piece from a parent that has it
(verifying the digest), reports each piece and each failure, asks for new
parents when none serves a piece in time, and goes to the origin when the
scheduler says so (or after ``parent_rounds`` fruitless waits).
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid

import grpc
import trio

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from dffs.daemon.piece_choice import MAX_PARENT_FAILURES, Parent, choose_piece, pick_parent
from dffs.digest import format_piece_digest
from dffs.errors import DffsError
from dffs.peertask import DownloadRequest, PeerTask
from dffs.rpc import bridge
from dffs.upload.client import PeerError, PieceClient

log = logging.getLogger(__name__)


class _SchedulerUnreachable(Exception):
    """The scheduler never answered the register: try the next one."""


class P2PContext:
    """What every fetcher of one daemon shares."""

    def __init__(
        self,
        *,
        host_id: str,
        schedulers: dict[str, scheduler_pb2_grpc.SchedulerStub],
        piece_client: PieceClient,
        parent_wait: float,
        parent_rounds: int,
        seed: bool,
    ):
        self.host_id = host_id
        #: scheduler address -> stub
        self.schedulers = schedulers
        self.piece_client = piece_client
        self.parent_wait = parent_wait
        self.parent_rounds = parent_rounds
        self.seed = seed
        self._channels: dict[str, grpc.Channel] = {}

    def schedulers_for(self, task_id: str) -> list[tuple[str, scheduler_pb2_grpc.SchedulerStub]]:
        """Schedulers in the order this task tries them: rendezvous hashing on the task ID,
        so every daemon picks the same one, and a dead one's tasks spread over the rest."""
        order = sorted(
            self.schedulers, key=lambda addr: hashlib.sha256(f"{task_id}|{addr}".encode()).digest(), reverse=True
        )
        return [(addr, self.schedulers[addr]) for addr in order]

    def upload_stub(self, ip: str, port: int) -> dfdaemon_pb2_grpc.DfdaemonUploadStub:
        target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = bridge.insecure_channel(target)
        return dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class P2PFetcher:
    def __init__(self, ctx: P2PContext, task: PeerTask, request: DownloadRequest):
        self.ctx = ctx
        self.task = task
        self.request = request
        self.peer_id = f"{ctx.host_id[:12]}-{task.task_id[:12]}-{uuid.uuid4().hex[:12]}"
        self.parents: dict[str, Parent] = {}
        self.back_to_source = False
        self._changed = trio.Event()
        self._stream: bridge.BidiStream | None = None
        self._send_lock = trio.Lock()
        self._piece_parent: dict[int, str] = {}
        self._random = random.Random()
        self._nursery: trio.Nursery | None = None
        self._started_status = None

    # ------------------------------------------------------ conversation
    def _message(self, **request) -> scheduler_pb2.AnnouncePeerRequest:
        return scheduler_pb2.AnnouncePeerRequest(
            host_id=self.ctx.host_id, task_id=self.task.task_id, peer_id=self.peer_id, **request
        )

    async def _send(self, message: scheduler_pb2.AnnouncePeerRequest) -> None:
        if self._stream is None:
            return
        async with self._send_lock:
            try:
                await self._stream.send(message)
            except (grpc.RpcError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("task=%s peer=%s event=scheduler_send_failed error=%s", self.task.task_id, self.peer_id, exc)
                self._give_up_on_scheduler()

    def _give_up_on_scheduler(self) -> None:
        if not self.back_to_source:
            log.warning("task=%s peer=%s event=scheduler_lost action=back_to_source", self.task.task_id, self.peer_id)
        self._stream = None
        self.back_to_source = True
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The AnnouncePeer conversation, for as long as the task downloads."""
        meta = self.task.store.meta
        download = common_pb2.Download(
            url=self.request.url,
            tag=self.request.tag,
            application=self.request.application,
            piece_length=meta.piece_length,
            request_header=dict(self.request.headers),
            need_back_to_source=self.ctx.seed,
        )
        self._started_status = task_status
        try:
            for address, stub in self.ctx.schedulers_for(self.task.task_id):
                try:
                    await self._converse(stub, download)
                    return
                except _SchedulerUnreachable:
                    log.warning(
                        "task=%s peer=%s event=scheduler_unreachable scheduler=%s action=next",
                        self.task.task_id,
                        self.peer_id,
                        address,
                    )
            log.warning("task=%s peer=%s event=no_scheduler action=back_to_source", self.task.task_id, self.peer_id)
        except (grpc.RpcError, DffsError) as exc:
            log.info("task=%s peer=%s event=announce_ended error=%s", self.task.task_id, self.peer_id, exc)
        finally:
            self._report_started()
            if not self.task.store.is_complete():
                self._give_up_on_scheduler()  # nobody left to ask: the origin it is
            self._stream = None

    def _report_started(self) -> None:
        """Tell whoever started us (once) that the task may begin fetching."""
        status, self._started_status = self._started_status, None
        if status is not None:
            status.started()

    async def _converse(self, stub, download) -> None:
        """One AnnouncePeer stream with one scheduler; _SchedulerUnreachable if it never answered."""
        async with bridge.open_bidi_stream(stub.AnnouncePeer) as stream:
            self._stream = stream
            await self._send(self._message(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download)))
            try:
                first = await stream.receive()
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self._stream = None
                    self.back_to_source = False
                    raise _SchedulerUnreachable() from None
                raise
            self._report_started()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._finish_when_complete, stream)
                self._handle(first)
                try:
                    async for response in stream:
                        self._handle(response)
                except grpc.RpcError as exc:
                    log.info(
                        "task=%s peer=%s event=announce_ended code=%s detail=%s",
                        self.task.task_id,
                        self.peer_id,
                        exc.code(),
                        exc.details(),
                    )
                nursery.cancel_scope.cancel()

    async def _finish_when_complete(self, stream: bridge.BidiStream) -> None:
        await self.task.wait_complete()
        meta = self.task.store.meta
        finished = scheduler_pb2.DownloadPeerFinishedRequest(
            content_length=meta.content_length, piece_count=meta.piece_count
        )
        await self._send(self._message(download_peer_finished_request=finished))
        async with self._send_lock:
            try:
                await stream.done_writing()
            except (grpc.RpcError, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _handle(self, response: scheduler_pb2.AnnouncePeerResponse) -> None:
        kind = response.WhichOneof("response")
        if kind == "normal_task_response":
            for peer in response.normal_task_response.candidate_parents:
                if peer.id in self.parents or not peer.host.ip:
                    continue
                parent = Parent(peer.id, peer.host.ip, peer.host.port, peer.host.download_port)
                self.parents[peer.id] = parent
                assert self._nursery is not None
                self._nursery.start_soon(self._watch, parent)
            log.info("task=%s peer=%s event=parents count=%d", self.task.task_id, self.peer_id, len(self.parents))
        elif kind in ("need_back_to_source_response", "empty_task_response"):
            log.info("task=%s peer=%s event=back_to_source reason=%s", self.task.task_id, self.peer_id, kind)
            self.back_to_source = True
        self._notify()

    async def _watch(self, parent: Parent) -> None:
        """Learn a parent's pieces as it gets them (SyncPieces)."""
        request = dfdaemon_pb2.SyncPiecesRequest(host_id=self.ctx.host_id, task_id=self.task.task_id)
        try:
            async with bridge.open_unary_stream(
                self.ctx.upload_stub(parent.ip, parent.port).SyncPieces, request
            ) as stream:
                async for piece in stream:
                    parent.pieces[piece.number] = piece.digest
                    self._notify()
        except grpc.RpcError as exc:
            log.info("task=%s parent=%s event=sync_ended code=%s", self.task.task_id, parent.id, exc.code())
        except trio.EndOfChannel:
            pass
        if not parent.pieces:
            self.parents.pop(parent.id, None)  # useless so far: may be offered again later

    # ---------------------------------------------------------- fetching
    async def fetch(self, task: PeerTask, number: int, buffer: memoryview) -> tuple[bool, bytes | None]:
        rounds = 0
        while True:
            changed = self._changed
            parent = pick_parent(self.parents.values(), number)
            if parent is not None:
                parent.active += 1
                try:
                    digest = await self.ctx.piece_client.fetch(
                        parent.ip,
                        parent.download_port,
                        task.task_id,
                        number,
                        buffer,
                        expected_digest=parent.pieces.get(number),
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
                    failed = scheduler_pb2.DownloadPieceFailedRequest(
                        piece_number=number, parent_id=parent.id, temporary=exc.retryable, description=str(exc)
                    )
                    await self._send(self._message(download_piece_failed_request=failed))
                    continue
                finally:
                    parent.active -= 1
                self._piece_parent[number] = parent.id
                return False, digest
            if self.back_to_source:
                await task.fetch_from_origin(number, buffer)
                return True, None
            with trio.move_on_after(self.ctx.parent_wait) as waited:
                await changed.wait()
            if not waited.cancelled_caught:
                rounds = 0  # progress somewhere (new pieces, parents, a decision): keep waiting
            else:
                rounds += 1
                if rounds >= self.ctx.parent_rounds:
                    log.warning("task=%s piece=%d event=no_parent_serves action=back_to_source", task.task_id, number)
                    self.back_to_source = True
                    continue
                avoid = [common_pb2.Peer(id=p.id) for p in self.parents.values() if not p.usable]
                await self._send(
                    self._message(
                        reschedule_request=scheduler_pb2.RescheduleRequest(
                            candidate_parents=avoid, description=f"no parent has piece {number}"
                        )
                    )
                )

    def choose(self, candidates: list[int]) -> int:
        """Rarest first among pieces some parent has (:func:`choose_piece`)."""
        return choose_piece(candidates, list(self.parents.values()), self._random, in_order=self.back_to_source)

    async def stored(self, task: PeerTask, number: int, origin: bool, seconds: float) -> None:
        span = task.store.span(number)
        digest = task.store.piece_digest(number)
        piece = common_pb2.Piece(
            number=number,
            offset=span.offset,
            length=span.length,
            digest=format_piece_digest(digest) if digest else "",
            parent_id="" if origin else self._piece_parent.pop(number, ""),
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


__all__ = ["P2PContext", "P2PFetcher", "Parent"]
