"""The daemon's gRPC DfdaemonUpload service: SyncPieces for children, DownloadTask for seed triggers."""

from __future__ import annotations

import logging
import re

import grpc
import trio

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from dffs.digest import format_piece_digest
from dffs.errors import DffsError
from dffs.peertask import DownloadRequest, TaskManager
from dffs.rpc import bridge
from dffs.storage import StorageManager

log = logging.getLogger(__name__)

_TASK_ID = re.compile(r"^[0-9a-f]{64}$")
#: How long SyncPieces waits for a task this host has not opened yet (a seed being triggered).
SYNC_WAIT_FOR_TASK = 30.0


class UploadService:
    def __init__(self, storage: StorageManager, tasks: TaskManager, host_id: str):
        self.storage = storage
        self.tasks = tasks
        self.host_id = host_id

    def register(self, server: grpc.Server) -> None:
        servicer = dfdaemon_pb2_grpc.DfdaemonUploadServicer()
        servicer.SyncPieces = bridge.trio_unary_stream(self.sync_pieces)
        servicer.DownloadTask = bridge.trio_unary_stream(self.download_task)
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(servicer, server)

    def _piece(self, store, number: int) -> dfdaemon_pb2.SyncPiecesResponse:
        span = store.span(number)
        digest = store.piece_digest(number)
        return dfdaemon_pb2.SyncPiecesResponse(
            number=number, offset=span.offset, length=span.length, digest=format_piece_digest(digest) if digest else ""
        )

    async def sync_pieces(self, request: dfdaemon_pb2.SyncPiecesRequest, context: grpc.ServicerContext):
        """Every piece held now, then each new one as it arrives, until complete."""
        if not _TASK_ID.match(request.task_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id must be 64 lowercase hex digits")
        task = self.tasks.active(request.task_id)
        if task is None:
            store = await trio.to_thread.run_sync(self.storage.open_task, request.task_id)
            if store is not None and store.is_complete():
                for number in store.present_pieces():
                    yield self._piece(store, number)
                return
            task = await self.tasks.wait_active(request.task_id, SYNC_WAIT_FOR_TASK)
            if task is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} is not on this host")
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

    async def download_task(self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.ServicerContext):
        """Download a task here (a seed's trigger), streaming progress."""
        download = request.download
        if not download.url:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "download.url is required")
        try:
            task = await self.tasks.open(
                DownloadRequest(
                    url=download.url,
                    headers=dict(download.request_header),
                    tag=download.tag,
                    application=download.application,
                )
            )
        except DffsError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        meta = task.store.meta
        yield dfdaemon_pb2.DownloadTaskResponse(
            host_id=self.host_id,
            task_id=task.task_id,
            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                content_length=meta.content_length, is_finished=task.store.is_complete()
            ),
        )
        try:
            await task.fetch_all()
        except DffsError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        for number in task.store.present_pieces():
            span = task.store.span(number)
            yield dfdaemon_pb2.DownloadTaskResponse(
                host_id=self.host_id,
                task_id=task.task_id,
                download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
                    piece=common_pb2.Piece(number=number, offset=span.offset, length=span.length)
                ),
            )


class DownloadService:
    """DfdaemonDownload on the daemon's Unix socket: ``dffs get --socket`` hands its download here."""

    def __init__(self, tasks: TaskManager, host_id: str):
        self.tasks = tasks
        self.host_id = host_id

    def register(self, server: grpc.Server, control=None) -> None:
        servicer = dfdaemon_pb2_grpc.DfdaemonDownloadServicer()
        servicer.DownloadTask = bridge.trio_unary_stream(self.download_task)
        if control is not None:  # dffs ctl's RPCs (dffs/daemon/control.py)
            control.install(servicer)
        dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(servicer, server)

    def register_with_control(self, daemon):
        from dffs.daemon.control import ControlService

        control = ControlService(daemon)
        return lambda server: self.register(server, control)

    async def download_task(self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.ServicerContext):
        from pathlib import Path

        from dffs.digest import ExpectedDigest
        from dffs.errors import UsageError
        from dffs.peertask.download import download_to_file

        download = request.download
        if not download.url or not download.HasField("output_path"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "download.url and download.output_path are required")
        try:
            expected = ExpectedDigest.parse(download.digest) if download.HasField("digest") else None
        except UsageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        req = DownloadRequest(
            url=download.url, headers=dict(download.request_header), tag=download.tag, application=download.application
        )
        timeout = download.timeout.ToTimedelta().total_seconds() if download.HasField("timeout") else 0
        try:
            with trio.fail_after(timeout or float("inf")):
                result = await download_to_file(self.tasks, req, Path(download.output_path), expected=expected)
        except trio.TooSlowError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{download.url}: did not finish within {timeout:g}s")
        except UsageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DffsError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
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
