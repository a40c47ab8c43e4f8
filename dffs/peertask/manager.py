"""The task manager: one PeerTask per task per process, whatever asks for it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from dffs.errors import SourceError
from dffs.idgen import piece_length_for, task_id
from dffs.peertask.buffers import BufferPool
from dffs.peertask.task import PeerTask
from dffs.source import SourceRegistry, SourceStat, Validators
from dffs.storage import StorageManager, TaskMeta

log = logging.getLogger(__name__)


@attrs.frozen
class DownloadRequest:
    """What a client asks for; the same fields make the same task ID on every peer."""

    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    tag: str = ""
    application: str = ""
    piece_length: int | None = None

    @property
    def task_id(self) -> str:
        return task_id(self.url, tag=self.tag, application=self.application, piece_length=self.piece_length)


class TaskManager:
    def __init__(self, storage: StorageManager, sources: SourceRegistry, *, buffers: BufferPool | None = None):
        self.storage = storage
        self.sources = sources
        self.buffers = buffers or BufferPool()
        #: ``async (task, request)`` run once for every task opened; the daemon uses it
        #: to install the P2P fetcher.
        self.on_open: Callable[[PeerTask, DownloadRequest], Awaitable[None]] | None = None
        #: ``async (request, error) -> SourceStat | None``: asked when the origin cannot
        #: say what the object is (down, gone); the daemon asks the scheduler, so a task
        #: imported elsewhere (``dffs ctl import``) can be fetched with no origin at all.
        self.stat_fallback: Callable[[DownloadRequest, SourceError], Awaitable[SourceStat | None]] | None = None
        self._tasks: dict[str, PeerTask] = {}
        self._opening: dict[str, trio.Lock] = {}
        self._opened: dict[str, trio.Event] = {}

    async def open(self, request: DownloadRequest) -> PeerTask:
        """The PeerTask for ``request``, revalidated against the origin once per process.

        Local pieces are kept when the origin confirms the object is unchanged
        (a 304 to a conditional HEAD, or matching ETag/Last-Modified); otherwise
        the task starts over so stale bytes are never served.
        """
        source = self.sources.for_url(request.url)
        tid = request.task_id
        lock = self._opening.setdefault(tid, trio.Lock())
        async with lock:
            task = self._tasks.get(tid)
            if task is not None:
                return task
            store = await trio.to_thread.run_sync(self.storage.open_task, tid)
            if store is not None and store.meta.imported:
                # Seeded from a local file: there is no origin to revalidate against.
                meta = store.meta
                stat = SourceStat(url=request.url, content_length=meta.content_length, etag=meta.etag)
            elif store is not None:
                meta = store.meta
                stat = await source.stat(
                    request.url,
                    headers=request.headers,
                    validators=Validators(etag=meta.etag, last_modified=meta.last_modified),
                )
                if not (stat.not_modified or meta.same_content_as(stat.content_length, stat.etag, stat.last_modified)):
                    log.info("task=%s event=origin_changed action=restart url=%s", tid, request.url)
                    store = None
            else:
                stat = await self._stat(source, request)
            if store is None:
                if stat.content_length is None:
                    raise SourceError(f"{request.url}: the origin does not report the object's size")
                meta = TaskMeta(
                    task_id=tid,
                    url=request.url,
                    content_length=stat.content_length,
                    piece_length=request.piece_length or piece_length_for(stat.content_length),
                    etag=stat.etag,
                    last_modified=stat.last_modified,
                    content_type=stat.content_type,
                    tag=request.tag,
                    application=request.application,
                )
                store = await trio.to_thread.run_sync(self.storage.create_task, meta)
            task = PeerTask(store, source, stat, headers=request.headers, buffers=self.buffers)
            if self.on_open is not None and not store.is_complete():
                await self.on_open(task, request)
            self._tasks[tid] = task
            self._opened.pop(tid, trio.Event()).set()
            return task

    async def _stat(self, source, request: DownloadRequest) -> SourceStat:
        try:
            return await source.stat(request.url, headers=request.headers)
        except SourceError as exc:
            if self.stat_fallback is None:
                raise
            stat = await self.stat_fallback(request, exc)
            if stat is None:
                raise
            log.info(
                "task=%s event=origin_stat_failed action=use_swarm_metadata size=%s error=%s",
                request.task_id,
                stat.content_length,
                exc,
            )
            return stat

    def active(self, tid: str) -> PeerTask | None:
        """The task's PeerTask if this process has it open."""
        return self._tasks.get(tid)

    async def wait_active(self, tid: str, timeout: float) -> PeerTask | None:
        """The task's PeerTask once something here opens it (None after ``timeout``).

        A child may ask a parent about a task a moment before the parent (a
        seed just triggered, say) has opened it."""
        with trio.move_on_after(timeout):
            while tid not in self._tasks:
                await self._opened.setdefault(tid, trio.Event()).wait()
        return self._tasks.get(tid)

    def forget(self, tid: str) -> None:
        """Drop the in-memory task (its pieces stay on disk unless deleted)."""
        self._tasks.pop(tid, None)

    async def delete(self, tid: str) -> None:
        self._tasks.pop(tid, None)
        await trio.to_thread.run_sync(self.storage.delete_task, tid)
