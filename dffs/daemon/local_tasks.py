"""What ``dffs ctl`` does to this host's cache: list, stat, delete, import, export, GC.

Plain Python, no gRPC: the control servicer (:mod:`dffs.daemon.service`)
converts messages and calls this; tests drive it in-process. Errors are
:mod:`dffs.errors` classes, which carry their own gRPC status.

The swarm side of the same operations goes through the scheduler client: an
imported task becomes a finished peer at its scheduler (so other hosts are
sent here for it, even with no origin at all), and a deleted task is deleted
there (so no child is sent here for it).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import attrs
import trio

from dffs.daemon.schedulers import SchedulerClient
from dffs.errors import DffsError, NotFound, NotReady, StorageError, UsageError
from dffs.gc.policy import GcLimits
from dffs.gc.service import GcResult, GcService
from dffs.idgen import is_task_id, piece_length_for
from dffs.peertask import DownloadRequest, TaskManager
from dffs.peertask.download import download_to_file
from dffs.peertask.export import PiecesEvicted, export_task, verify_task
from dffs.source import SourceRegistry
from dffs.storage import StorageManager, TaskMeta, TaskStore

log = logging.getLogger(__name__)


@attrs.frozen
class LocalTaskInfo:
    """One task as this host holds it."""

    meta: TaskMeta
    present_pieces: int
    present_bytes: int
    disk_bytes: int
    last_access: float
    #: Being downloaded or read right now.
    active: bool

    @property
    def complete(self) -> bool:
        return self.present_pieces == self.meta.piece_count

    @property
    def state(self) -> str:
        return "Succeeded" if self.complete else ("Partial" if self.present_pieces else "Empty")


@attrs.frozen
class GcReport:
    result: GcResult
    limits: GcLimits


class LocalTasks:
    def __init__(
        self,
        storage: StorageManager,
        tasks: TaskManager,
        gc: GcService,
        schedulers: SchedulerClient,
        sources: SourceRegistry,
    ):
        self.storage = storage
        self.tasks = tasks
        self.gc = gc
        self.schedulers = schedulers
        self.sources = sources

    # ------------------------------------------------------------ helpers
    def is_active(self, task_id: str) -> bool:
        task = self.tasks.active(task_id)
        return task is not None and (task.filling > 0 or bool(task.store.pinned_pieces()))

    def _info(self, store: TaskStore) -> LocalTaskInfo:
        present = store.present_pieces()
        return LocalTaskInfo(
            meta=store.meta,
            present_pieces=len(present),
            present_bytes=sum(store.span(n).length for n in present),
            disk_bytes=store.disk_bytes(),
            last_access=store.last_access,
            active=self.is_active(store.task_id),
        )

    async def _store(self, task_id: str) -> TaskStore:
        if not is_task_id(task_id):
            raise UsageError(f"bad task id {task_id!r}: expected 64 hex digits")
        store = await trio.to_thread.run_sync(self.storage.open_task, task_id)
        if store is None:
            raise NotFound(f"task {task_id} is not on this host")
        return store

    # ---------------------------------------------------------- operations
    async def list(self) -> list[LocalTaskInfo]:
        """Every task on this host, most recently used first."""

        def collect() -> list[LocalTaskInfo]:
            # From each task's summary: a listing must not open every task on disk (two files each).
            infos = []
            for tid in self.storage.task_ids():
                summary = self.storage.summary(tid)
                if summary is not None:
                    infos.append(
                        LocalTaskInfo(
                            meta=summary.meta,
                            present_pieces=len(summary.pieces),
                            present_bytes=sum(length for _, length in summary.pieces),
                            disk_bytes=summary.disk_bytes,
                            last_access=summary.last_access,
                            active=self.is_active(tid),
                        )
                    )
            return infos

        infos = await trio.to_thread.run_sync(collect)
        infos.sort(key=lambda info: -info.last_access)
        return infos

    async def stat(self, task_id: str) -> LocalTaskInfo:
        return self._info(await self._store(task_id))

    async def delete(self, task_id: str) -> None:
        """Delete an idle task here and at its scheduler."""
        store = await self._store(task_id)
        if self.is_active(store.task_id):
            raise NotReady(f"task {store.task_id} is being downloaded or read; try again when it is idle")
        await self.tasks.delete(store.task_id)
        log.info("task=%s event=task_deleted by=ctl", store.task_id)
        await self.schedulers.delete_task(store.task_id)

    async def import_file(self, path: Path, request: DownloadRequest) -> LocalTaskInfo:
        """``path``'s bytes as the complete task of ``request`` (no origin to revalidate against),
        announced to the task's scheduler as a finished peer."""
        if not path.is_absolute():
            raise UsageError(f"{path}: the path must be absolute")
        self.sources.validate(request.url)
        tid = request.task_id
        if self.tasks.active(tid) is not None:
            raise NotReady(f"task {tid} ({request.url}) is open on this host; delete it first (dffs ctl rm)")
        self.gc.hold(tid)
        try:
            store = await trio.to_thread.run_sync(self._import, path, request)
        except OSError as exc:
            raise StorageError(f"cannot import {path}: {exc.strerror}") from None
        except DffsError as exc:
            raise StorageError(f"cannot import {exc}") from None
        finally:
            self.gc.release(tid)
        log.info(
            "task=%s event=task_imported url=%s bytes=%d path=%s", tid, request.url, store.meta.content_length, path
        )
        await self.schedulers.announce_import(store)
        return self._info(store)

    def _import(self, path: Path, request: DownloadRequest) -> TaskStore:
        """In a worker thread: the file's bytes as a complete task, each piece digested."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DffsError(f"{path}: not a regular file")
            size = st.st_size
            meta = TaskMeta(
                task_id=request.task_id,
                url=request.url,
                content_length=size,
                piece_length=request.piece_length or piece_length_for(size),
                tag=request.tag,
                application=request.application,
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

    async def export(
        self,
        output: Path,
        *,
        task_id: str | None = None,
        request: DownloadRequest | None = None,
        local_only: bool = False,
    ) -> LocalTaskInfo:
        """Write a task (by ID, or by what a request names) to ``output``: from local pieces
        when they are complete and sound, else downloaded (unless ``local_only``)."""
        if not output.is_absolute():
            raise UsageError("output_path must be an absolute path")
        if task_id is not None:
            store: TaskStore | None = await self._store(task_id)
            assert store is not None
            request = DownloadRequest(url=store.meta.url, tag=store.meta.tag, application=store.meta.application)
        elif request is not None:
            task_id = request.task_id
            store = await trio.to_thread.run_sync(self.storage.open_task, task_id)
        else:
            raise UsageError("a task id or download.url is required")
        if store is not None and store.is_complete():
            sound = store

            def local_export() -> bool:
                if verify_task(sound, None):
                    return False  # corrupt pieces were dropped: download them again below
                sound.touch()
                try:
                    export_task(sound, output)
                except PiecesEvicted:
                    return False  # the GC took pieces since the check: download them again below
                return True

            if await trio.to_thread.run_sync(local_export):
                return self._info(sound)
        if local_only:
            have = len(store.present_pieces()) if store is not None else 0
            total = store.meta.piece_count if store is not None else "?"
            raise NotReady(f"task {task_id} is not complete here ({have} of {total} pieces)")
        result = await download_to_file(self.tasks, request, output)
        return await self.stat(result.task_id)

    async def run_gc(self) -> GcReport:
        result = await self.gc.run_once()
        return GcReport(result, self.gc.limits)
