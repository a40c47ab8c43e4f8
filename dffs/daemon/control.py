"""The daemon's control service (``dffs ctl``) and its conversations with the scheduler about the cache.

Served on the daemon's Unix socket (mode 0600) as the rest of
``DfdaemonDownload``: ListTasks, StatTask, DeleteTask, ImportTask,
ExportTask, Health and RunGC. The socket's mode is the access control:
whoever may open it acts as the daemon (imports read, exports write files).

Also here, because they are the swarm side of the same cache operations:

* :func:`announce_import`: an imported task becomes a finished peer at the
  task's scheduler (pieces reported as if fetched from the origin, with their
  digests), so other hosts are sent here for it;
* :func:`swarm_stat`: when the origin cannot say what an object is (down,
  gone), ask the task's scheduler, which learnt the size from the peer that
  finished it; this is how a host fetches an imported task with no origin;
* :func:`report_evictions`: pieces and tasks the GC evicted are deleted at
  the scheduler, so no child is sent here for them.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import trio
from google.protobuf import empty_pb2, timestamp_pb2

from dffs import __version__
from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from dffs.digest import format_piece_digest
from dffs.errors import DffsError, UsageError
from dffs.idgen import piece_length_for
from dffs.peertask import DownloadRequest
from dffs.peertask.export import export_task, verify_task
from dffs.rpc import bridge
from dffs.source import SourceStat
from dffs.storage import TaskMeta, TaskStore

if TYPE_CHECKING:
    from dffs.daemon.p2p import P2PContext
    from dffs.daemon.service import Daemon
    from dffs.gc.service import GcResult

log = logging.getLogger(__name__)

_TASK_ID = re.compile(r"^[0-9a-f]{64}$")
#: Bytes read per piece write when importing (the piece itself: pieces are at most 16 MiB).
_SCHEDULER_TIMEOUT = 10.0


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def local_task(store: TaskStore, *, active: bool) -> dfdaemon_pb2.LocalTask:
    meta = store.meta
    present = store.present_pieces()
    complete = len(present) == meta.piece_count
    task = common_pb2.Task(
        id=meta.task_id,
        type=common_pb2.TASK_TYPE_PERSISTENT if meta.imported else common_pb2.TASK_TYPE_STANDARD,
        url=meta.url,
        tag=meta.tag,
        application=meta.application,
        piece_length=meta.piece_length,
        content_length=meta.content_length,
        piece_count=meta.piece_count,
        state="Succeeded" if complete else ("Partial" if present else "Empty"),
        created_at=_timestamp(meta.created_at),
    )
    return dfdaemon_pb2.LocalTask(
        task=task,
        present_piece_count=len(present),
        present_bytes=sum(store.span(n).length for n in present),
        disk_bytes=store.disk_bytes(),
        last_access=_timestamp(store.last_access),
        imported=meta.imported,
        active=active,
    )


class ControlService:
    """The ctl RPCs, installed on the daemon's DfdaemonDownload servicer."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def storage(self):
        return self.daemon.storage

    @property
    def tasks(self):
        return self.daemon.tasks

    def install(self, servicer: dfdaemon_pb2_grpc.DfdaemonDownloadServicer) -> None:
        servicer.ListTasks = bridge.trio_unary(self.list_tasks)
        servicer.StatTask = bridge.trio_unary(self.stat_task)
        servicer.DeleteTask = bridge.trio_unary(self.delete_task)
        servicer.ImportTask = bridge.trio_unary(self.import_task)
        servicer.ExportTask = bridge.trio_unary(self.export_task)
        servicer.Health = bridge.trio_unary(self.health)
        servicer.RunGC = bridge.trio_unary(self.run_gc)

    # ------------------------------------------------------------ helpers
    def _active(self, task_id: str) -> bool:
        task = self.tasks.active(task_id)
        return task is not None and (task.filling > 0 or bool(task.store.pinned_pieces()))

    async def _store(self, task_id: str, context) -> TaskStore:
        if not _TASK_ID.match(task_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad task id {task_id!r}: expected 64 hex digits")
        store = await trio.to_thread.run_sync(self.storage.open_task, task_id)
        if store is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} is not on this host")
        return store

    # --------------------------------------------------------------- RPCs
    async def health(self, request, context) -> dfdaemon_pb2.HealthResponse:
        return dfdaemon_pb2.HealthResponse(host_id=self.daemon.cfg.host_id, version=__version__, serving=True)

    async def list_tasks(self, request, context) -> dfdaemon_pb2.ListTasksResponse:
        def collect():
            stores = [self.storage.open_task(tid) for tid in self.storage.task_ids()]
            return [local_task(s, active=self._active(s.task_id)) for s in stores if s is not None]

        tasks = await trio.to_thread.run_sync(collect)
        tasks.sort(key=lambda t: -t.last_access.ToNanoseconds())
        return dfdaemon_pb2.ListTasksResponse(tasks=tasks)

    async def stat_task(self, request, context) -> dfdaemon_pb2.LocalTask:
        store = await self._store(request.task_id, context)
        return local_task(store, active=self._active(store.task_id))

    async def delete_task(self, request, context) -> empty_pb2.Empty:
        store = await self._store(request.task_id, context)
        if self._active(store.task_id):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {store.task_id} is being downloaded or read; try again when it is idle",
            )
        self.tasks.forget(store.task_id)
        await trio.to_thread.run_sync(self.storage.delete_task, store.task_id)
        log.info("task=%s event=task_deleted by=ctl", store.task_id)
        if self.daemon.p2p is not None:
            await delete_at_scheduler(self.daemon.p2p, store.task_id)
        return empty_pb2.Empty()

    async def import_task(self, request, context) -> dfdaemon_pb2.LocalTask:
        download = request.download
        path = Path(request.path)
        if not download.url:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "download.url is required")
        if not path.is_absolute():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: the path must be absolute")
        try:
            self.daemon.sources.validate(download.url)
        except UsageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        req = DownloadRequest(
            url=download.url,
            tag=download.tag,
            application=download.application,
            piece_length=download.piece_length if download.HasField("piece_length") else None,
        )
        tid = req.task_id
        if self.tasks.active(tid) is not None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {tid} ({download.url}) is open on this host; delete it first (dffs ctl rm)",
            )
        gc = self.daemon.gc
        if gc is not None:
            gc.hold(tid)
        try:
            store = await trio.to_thread.run_sync(self._import, path, req)
        except (OSError, DffsError) as exc:
            message = f"{path}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot import {message}")
        finally:
            if gc is not None:
                gc.release(tid)
        log.info(
            "task=%s event=task_imported url=%s bytes=%d path=%s", tid, download.url, store.meta.content_length, path
        )
        if self.daemon.p2p is not None:
            await announce_import(self.daemon.p2p, store, req)
        return local_task(store, active=False)

    def _import(self, path: Path, req: DownloadRequest) -> TaskStore:
        """In a worker thread: the file's bytes as a complete task, each piece digested."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DffsError(f"{path}: not a regular file")
            size = st.st_size
            meta = TaskMeta(
                task_id=req.task_id,
                url=req.url,
                content_length=size,
                piece_length=req.piece_length or piece_length_for(size),
                tag=req.tag,
                application=req.application,
                imported=True,
            )
            store = self.storage.create_task(meta)
            try:
                buffer = bytearray(meta.piece_length)
                for number in range(meta.piece_count):
                    span = store.span(number)
                    view = memoryview(buffer)[: span.length]
                    got = os.preadv(fd, [view], span.offset)
                    while got < span.length:
                        more = os.preadv(fd, [view[got:]], span.offset + got)
                        if more == 0:
                            raise DffsError(f"{path}: the file shrank while it was imported")
                        got += more
                    store.write_piece(number, view)
                if os.fstat(fd).st_size != size:
                    raise DffsError(f"{path}: the file changed while it was imported")
            except BaseException:
                self.storage.delete_task(meta.task_id)
                raise
            store.touch()
            return store
        finally:
            os.close(fd)

    async def export_task(self, request, context) -> dfdaemon_pb2.LocalTask:
        from dffs.peertask.download import download_to_file

        output = Path(request.output_path)
        if not request.output_path or not output.is_absolute():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "output_path must be an absolute path")
        if request.WhichOneof("target") == "task_id":
            tid = request.task_id
            store = await self._store(tid, context)
            req = DownloadRequest(url=store.meta.url, tag=store.meta.tag, application=store.meta.application)
        else:
            d = request.download
            if not d.url:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a task id or download.url is required")
            req = DownloadRequest(
                url=d.url,
                tag=d.tag,
                application=d.application,
                piece_length=d.piece_length if d.HasField("piece_length") else None,
            )
            tid = req.task_id
            store = await trio.to_thread.run_sync(self.storage.open_task, tid)
        try:
            if store is not None and store.is_complete():

                def local_export():
                    bad = verify_task(store, None)
                    if bad:
                        return bad
                    store.touch()
                    export_task(store, output)
                    return []

                if not await trio.to_thread.run_sync(local_export):
                    return local_task(store, active=self._active(tid))
            if request.local_only:
                have = len(store.present_pieces()) if store is not None else 0
                total = store.meta.piece_count if store is not None else "?"
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"task {tid} is not complete here ({have} of {total} pieces)"
                )
            result = await download_to_file(self.tasks, req, output)
        except UsageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DffsError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        store = await trio.to_thread.run_sync(self.storage.open_task, result.task_id)
        return local_task(store, active=self._active(result.task_id))

    async def run_gc(self, request, context) -> dfdaemon_pb2.RunGCResponse:
        gc = self.daemon.gc
        if gc is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the GC is not running on this daemon")
        result = await gc.run_once()
        limits = gc.limits
        return dfdaemon_pb2.RunGCResponse(
            evicted_tasks=len(result.evicted_tasks),
            evicted_pieces=result.piece_count,
            freed_bytes=result.freed,
            used_bytes=result.used,
            quota_bytes=limits.quota,
            high_watermark_bytes=limits.high_bytes if limits.quota else 0,
            low_watermark_bytes=limits.low_bytes if limits.quota else 0,
        )


# ---------------------------------------------------------------- scheduler side


async def announce_import(ctx: P2PContext, store: TaskStore, request: DownloadRequest) -> bool:
    """Register an imported task as a finished peer at its scheduler; True when one took it."""
    meta = store.meta
    tid = meta.task_id
    peer_id = f"{ctx.host_id[:12]}-{tid[:12]}-{uuid.uuid4().hex[:12]}"
    download = common_pb2.Download(
        url=meta.url,
        tag=meta.tag,
        application=meta.application,
        piece_length=meta.piece_length,
        need_back_to_source=True,
    )

    def message(**kwargs) -> scheduler_pb2.AnnouncePeerRequest:
        return scheduler_pb2.AnnouncePeerRequest(host_id=ctx.host_id, task_id=tid, peer_id=peer_id, **kwargs)

    for address, stub in ctx.schedulers_for(tid):
        try:
            with trio.fail_after(_SCHEDULER_TIMEOUT + meta.piece_count / 1000):
                async with bridge.open_bidi_stream(stub.AnnouncePeer) as stream:
                    await stream.send(
                        message(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download))
                    )
                    await stream.receive()  # need-back-to-source (or empty task): we hold it all anyway
                    started = time.time()
                    for number in store.present_pieces():
                        span = store.span(number)
                        digest = store.piece_digest(number)
                        piece = common_pb2.Piece(
                            number=number,
                            offset=span.offset,
                            length=span.length,
                            digest=format_piece_digest(digest) if digest else "",
                            created_at=_timestamp(started),
                        )
                        await stream.send(
                            message(
                                download_piece_back_to_source_finished_request=(
                                    scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
                                )
                            )
                        )
                    await stream.send(
                        message(
                            download_peer_back_to_source_finished_request=(
                                scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(
                                    content_length=meta.content_length, piece_count=meta.piece_count
                                )
                            )
                        )
                    )
                    await stream.done_writing()
                    async for _ in stream:
                        pass
            log.info("task=%s peer=%s event=import_announced scheduler=%s", tid, peer_id, address)
            return True
        except (grpc.RpcError, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError) as exc:
            log.warning(
                "task=%s event=import_announce_failed scheduler=%s error=%s",
                tid,
                address,
                exc.details() if isinstance(exc, grpc.RpcError) else exc,
            )
    return False


async def swarm_stat(ctx: P2PContext, request: DownloadRequest, error: Exception) -> SourceStat | None:
    """The object's size from the task's scheduler, when some peer holds it."""
    tid = request.task_id
    for address, stub in ctx.schedulers_for(tid):
        try:
            task = await bridge.unary(
                stub.StatTask,
                scheduler_pb2.StatTaskRequest(host_id=ctx.host_id, task_id=tid),
                timeout=_SCHEDULER_TIMEOUT,
            )
        except grpc.RpcError as exc:
            log.info("task=%s event=swarm_stat_failed scheduler=%s code=%s", tid, address, exc.code())
            continue
        if task.HasField("content_length") and task.has_available_peer:
            return SourceStat(url=request.url, content_length=task.content_length, accepts_ranges=True)
        return None
    return None


async def delete_at_scheduler(ctx: P2PContext, task_id: str) -> None:
    for address, stub in ctx.schedulers_for(task_id)[:1]:
        try:
            await bridge.unary(
                stub.DeleteTask,
                scheduler_pb2.DeleteTaskRequest(host_id=ctx.host_id, task_id=task_id),
                timeout=_SCHEDULER_TIMEOUT,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.info("task=%s event=scheduler_delete_failed scheduler=%s code=%s", task_id, address, exc.code())


async def report_evictions(ctx: P2PContext, result: GcResult) -> None:
    """Tell each task's scheduler what the GC took from this host."""
    for task_id in result.evicted_tasks:
        await delete_at_scheduler(ctx, task_id)
    for task_id, numbers in result.evicted_pieces:
        for address, stub in ctx.schedulers_for(task_id)[:1]:
            try:
                await bridge.unary(
                    stub.DeletePieces,
                    scheduler_pb2.DeletePiecesRequest(host_id=ctx.host_id, task_id=task_id, piece_numbers=numbers),
                    timeout=_SCHEDULER_TIMEOUT,
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "task=%s event=scheduler_delete_pieces_failed scheduler=%s code=%s",
                        task_id,
                        address,
                        exc.code(),
                    )
