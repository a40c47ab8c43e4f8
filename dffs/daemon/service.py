"""The daemon's gRPC servicers, one class per service, each built with exactly what it needs.

* :class:`UploadServicer` — ``DfdaemonUpload`` on the daemon's RPC port, for
  other members: ``SyncPieces`` (what a child learns of this parent's pieces)
  and ``DownloadTask`` (a seed trigger, or a manager's preheat).
* :class:`DownloadServicer` — ``DfdaemonDownload`` on ``DATA_DIR/dffs.sock``
  (mode 0600: whoever may open it acts as the daemon), for local clients:
  ``dffs get`` hands its download here, ``dffs ctl`` lists, stats, deletes,
  imports, exports and runs the GC (:class:`~dffs.daemon.local_tasks.LocalTasks`).

Servicers only convert messages: errors are :mod:`dffs.errors` classes, which
the bridge turns into their gRPC status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import trio
from google.protobuf import empty_pb2

from dffs import __version__
from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from dffs.daemon.local_tasks import LocalTaskInfo, LocalTasks
from dffs.daemon.schedulers import timestamp
from dffs.digest import ExpectedDigest, format_piece_digest
from dffs.errors import NotFound, UsageError
from dffs.idgen import is_task_id
from dffs.peertask import DownloadRequest, TaskManager
from dffs.peertask.download import download_to_file
from dffs.rpc import bridge
from dffs.security.redact import redact_url
from dffs.security.transport import Transport
from dffs.security.urls import Forbidden, RemoteUrlPolicy
from dffs.storage import StorageManager, TaskStore

log = logging.getLogger(__name__)

#: How long SyncPieces waits for a task this host has not opened yet (a seed being triggered).
SYNC_WAIT_FOR_TASK = 30.0


def download_request(download: common_pb2.Download, *, from_member: bool) -> DownloadRequest:
    """The task-layer request a proto ``Download`` names: the one conversion, for every servicer.

    A member's Download (a seed trigger, a preheat) carries the piece length the
    scheduler learned, as information: the task is the one every other reader of
    the URL has, so it does not name the task. A local client's (``dffs ctl
    import/export --piece-length``) does: it asks for that piece length.
    """
    if not download.url:
        raise UsageError("download.url is required")
    explicit = download.HasField("piece_length") and not from_member
    return DownloadRequest(
        url=download.url,
        headers=dict(download.request_header),
        tag=download.tag,
        application=download.application,
        piece_length=download.piece_length if explicit else None,
    )


#: Longest deadline a local client may give a download (a year; more is a garbage value).
MAX_DOWNLOAD_TIMEOUT = 365 * 24 * 3600.0


def download_expectations(download: common_pb2.Download) -> tuple[float, ExpectedDigest | None]:
    """What a local client's download must meet: a deadline in seconds (0: none) and a whole-object
    digest; UsageError for a negative or absurd deadline, or a malformed digest."""
    expected = ExpectedDigest.parse(download.digest) if download.HasField("digest") else None
    timeout = 0.0
    if download.HasField("timeout"):
        timeout = download.timeout.seconds + download.timeout.nanos / 1e9
        if not 0 <= timeout <= MAX_DOWNLOAD_TIMEOUT:
            raise UsageError(f"download timeout {timeout:g}s is not between 0 and {MAX_DOWNLOAD_TIMEOUT:g}s")
    return timeout, expected


def _task_id(text: str) -> str:
    if not is_task_id(text):
        raise UsageError("task_id must be 64 lowercase hex digits")
    return text


class UploadServicer(dfdaemon_pb2_grpc.DfdaemonUploadServicer, bridge.TrioServicer):
    """For members only (mutual TLS): what they may ask of this host is limited (:meth:`DownloadTask`)."""

    def __init__(
        self,
        storage: StorageManager,
        tasks: TaskManager,
        host_id: str,
        transport: Transport,
        url_policy: RemoteUrlPolicy,
    ):
        bridge.TrioServicer.__init__(self)
        self.storage = storage
        self.tasks = tasks
        self.host_id = host_id
        self.transport = transport
        self.url_policy = url_policy

    @staticmethod
    def _piece(store: TaskStore, number: int) -> dfdaemon_pb2.SyncPiecesResponse:
        span = store.span(number)
        digest = store.piece_digest(number)
        return dfdaemon_pb2.SyncPiecesResponse(
            number=number,
            offset=span.offset,
            length=span.length,
            digest=format_piece_digest(digest) if digest else "",
        )

    @bridge.unary_stream_method
    async def SyncPieces(  # noqa: N802 (gRPC method name)
        self, request: dfdaemon_pb2.SyncPiecesRequest, context: grpc.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        """Every piece held now, then each new one as it arrives, until complete."""
        tid = _task_id(request.task_id)
        task = self.tasks.active(tid)
        if task is None:
            store = await trio.to_thread.run_sync(self.storage.open_task, tid)
            if store is not None and store.is_complete():
                for number in store.present_pieces():
                    yield self._piece(store, number)
                return
            task = await self.tasks.wait_active(tid, SYNC_WAIT_FOR_TASK)
            if task is None:
                raise NotFound(f"task {tid} is not on this host")
        with task.subscription() as arrivals:
            sent = set()
            for number in task.store.present_pieces():
                sent.add(number)
                yield self._piece(task.store, number)
            while not task.store.is_complete():
                try:
                    number = await arrivals.receive()
                except trio.EndOfChannel:
                    return  # fell behind: the child reconnects and re-syncs
                if number not in sent and task.store.has_piece(number):
                    sent.add(number)
                    yield self._piece(task.store, number)
            for number in task.store.present_pieces():
                if number not in sent:
                    yield self._piece(task.store, number)

    @bridge.unary_stream_method
    async def DownloadTask(  # noqa: N802
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        """Download a task here (a seed's trigger, a preheat), streaming progress.

        Only schedulers (seed triggers) and managers (preheat) may ask, and only for what the
        cluster shares: never a local file, never an address inside this host or its cloud's
        metadata service. A refusal is a PERMISSION_DENIED and a log line, never a fetch."""
        caller = self.transport.peer(context)
        req = download_request(request.download, from_member=True)
        try:
            if self.transport.secure and (caller is None or caller.role not in ("scheduler", "manager")):
                who = caller.uri if caller is not None else "an unknown caller"
                raise Forbidden(f"{who} may not trigger downloads on this host (only schedulers and managers)")
            await trio.to_thread.run_sync(self.url_policy.check, req.url)
        except Forbidden as exc:
            log.warning(
                "event=remote_download_refused caller=%s url=%s error=%s",
                caller.uri if caller is not None else context.peer(),
                redact_url(req.url),
                exc,
            )
            raise
        task = await self.tasks.open(req)
        meta = task.store.meta
        yield dfdaemon_pb2.DownloadTaskResponse(
            host_id=self.host_id,
            task_id=task.task_id,
            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                content_length=meta.content_length, is_finished=task.store.is_complete()
            ),
        )
        await task.fetch_all()
        for number in task.store.present_pieces():
            span = task.store.span(number)
            yield dfdaemon_pb2.DownloadTaskResponse(
                host_id=self.host_id,
                task_id=task.task_id,
                download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
                    piece=common_pb2.Piece(number=number, offset=span.offset, length=span.length)
                ),
            )


def _local_task(info: LocalTaskInfo) -> dfdaemon_pb2.LocalTask:
    meta = info.meta
    task = common_pb2.Task(
        id=meta.task_id,
        type=common_pb2.TASK_TYPE_PERSISTENT if meta.imported else common_pb2.TASK_TYPE_STANDARD,
        url=meta.url,
        tag=meta.tag,
        application=meta.application,
        piece_length=meta.piece_length,
        content_length=meta.content_length,
        piece_count=meta.piece_count,
        state=info.state,
        created_at=timestamp(meta.created_at),
    )
    return dfdaemon_pb2.LocalTask(
        task=task,
        present_piece_count=info.present_pieces,
        present_bytes=info.present_bytes,
        disk_bytes=info.disk_bytes,
        last_access=timestamp(info.last_access),
        imported=meta.imported,
        active=info.active,
    )


class DownloadServicer(dfdaemon_pb2_grpc.DfdaemonDownloadServicer, bridge.TrioServicer):
    def __init__(self, tasks: TaskManager, local: LocalTasks, host_id: str):
        bridge.TrioServicer.__init__(self)
        self.tasks = tasks
        self.local = local
        self.host_id = host_id

    @bridge.unary_stream_method
    async def DownloadTask(  # noqa: N802
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        """``dffs get``'s download, done by this daemon into the caller's output path."""
        download = request.download
        if not download.HasField("output_path"):
            raise UsageError("download.url and download.output_path are required")
        req = download_request(download, from_member=False)
        timeout, expected = download_expectations(download)
        try:
            with trio.fail_after(timeout or float("inf")):
                result = await download_to_file(self.tasks, req, Path(download.output_path), expected=expected)
        except trio.TooSlowError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{download.url}: did not finish within {timeout:g}s")
        yield dfdaemon_pb2.DownloadTaskResponse(
            host_id=self.host_id,
            task_id=result.task_id,
            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                content_length=result.size,
                is_finished=True,
                response_header={
                    "x-dffs-origin-bytes": str(result.origin_bytes),
                    "x-dffs-peer-bytes": str(result.peer_bytes),
                },
            ),
        )

    @bridge.unary_method
    async def Health(  # noqa: N802
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> dfdaemon_pb2.HealthResponse:
        return dfdaemon_pb2.HealthResponse(host_id=self.host_id, version=__version__, serving=True)

    @bridge.unary_method
    async def ListTasks(  # noqa: N802
        self, request: dfdaemon_pb2.ListTasksRequest, context: grpc.ServicerContext
    ) -> dfdaemon_pb2.ListTasksResponse:
        return dfdaemon_pb2.ListTasksResponse(tasks=[_local_task(info) for info in await self.local.list()])

    @bridge.unary_method
    async def StatTask(  # noqa: N802
        self, request: dfdaemon_pb2.StatTaskRequest, context: grpc.ServicerContext
    ) -> dfdaemon_pb2.LocalTask:
        return _local_task(await self.local.stat(request.task_id))

    @bridge.unary_method
    async def DeleteTask(  # noqa: N802
        self, request: dfdaemon_pb2.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        await self.local.delete(request.task_id)
        return empty_pb2.Empty()

    @bridge.unary_method
    async def ImportTask(  # noqa: N802
        self, request: dfdaemon_pb2.ImportTaskRequest, context: grpc.ServicerContext
    ) -> dfdaemon_pb2.LocalTask:
        return _local_task(
            await self.local.import_file(Path(request.path), download_request(request.download, from_member=False))
        )

    @bridge.unary_method
    async def ExportTask(  # noqa: N802
        self, request: dfdaemon_pb2.ExportTaskRequest, context: grpc.ServicerContext
    ) -> dfdaemon_pb2.LocalTask:
        if not request.output_path:
            raise UsageError("output_path must be an absolute path")
        output = Path(request.output_path)
        if request.WhichOneof("target") == "task_id":
            info = await self.local.export(output, task_id=request.task_id, local_only=request.local_only)
        else:
            info = await self.local.export(
                output, request=download_request(request.download, from_member=False), local_only=request.local_only
            )
        return _local_task(info)

    @bridge.unary_method
    async def RunGC(  # noqa: N802
        self, request: dfdaemon_pb2.RunGCRequest, context: grpc.ServicerContext
    ) -> dfdaemon_pb2.RunGCResponse:
        report = await self.local.run_gc()
        result, limits = report.result, report.limits
        return dfdaemon_pb2.RunGCResponse(
            evicted_tasks=len(result.evicted_tasks),
            evicted_pieces=result.piece_count,
            freed_bytes=result.freed,
            used_bytes=result.used,
            quota_bytes=limits.quota,
            high_watermark_bytes=limits.high_bytes if limits.quota else 0,
            low_watermark_bytes=limits.low_bytes if limits.quota else 0,
        )


__all__ = ["DownloadServicer", "UploadServicer", "download_request"]
