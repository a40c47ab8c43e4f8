"""The task manager: one PeerTask per task per process, whatever asks for it.

The manager owns every task's background work: it is an async context manager
whose nursery hosts one :class:`~dffs.peertask.background.Background` per open
task, so leaving the block ends all of it, and forgetting or deleting a task
ends that task's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import trio

from dffs.bounds import check_size
from dffs.digest import ExpectedDigest
from dffs.errors import DigestMismatch, SourceError, StorageError, UsageError
from dffs.idgen import piece_count, piece_length_for
from dffs.peertask.background import Background
from dffs.peertask.buffers import BufferPool
from dffs.peertask.export import verify_task
from dffs.peertask.request import DownloadRequest
from dffs.peertask.singleflight import SingleFlight
from dffs.peertask.swarm import NoSwarm, Swarm
from dffs.peertask.task import PeerTask, ProgressCallback
from dffs.source import Source, SourceRegistry, SourceStat, Validators
from dffs.source.http.protocol import forwarded_headers
from dffs.storage import StorageManager, TaskMeta, TaskStore

log = logging.getLogger(__name__)

#: Rounds of "drop the corrupt pieces, fetch them again" before a task is given up on.
VERIFY_ROUNDS = 3
#: Most pieces one task may have (its piece table and journal are kept whole).
MAX_PIECE_COUNT = 1 << 22
#: Seconds an open task may sit unused before the task manager forgets it.
DEFAULT_IDLE_TIMEOUT = 600.0
#: Seconds after which local pieces are checked with the origin again (0: at every open, as `dffs get` wants;
#: daemons and mounts set their `revalidate_ttl`).
DEFAULT_REVALIDATE_TTL = 0.0


class TaskManager:
    def __init__(
        self,
        storage: StorageManager,
        sources: SourceRegistry,
        *,
        swarm: Swarm | None = None,
        buffers: BufferPool | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        revalidate_ttl: float = DEFAULT_REVALIDATE_TTL,
    ):
        self.storage = storage
        self.sources = sources
        #: Where pieces and metadata come from besides the origin (the daemon's P2P; NoSwarm alone).
        self.swarm: Swarm = swarm or NoSwarm()
        self.buffers = buffers or BufferPool()
        #: A task nobody has used for this long is forgotten (0: never), see :meth:`_sweep_idle`.
        self.idle_timeout = idle_timeout
        #: Local pieces confirmed by the origin (or a task created) this recently are used without asking again.
        self.revalidate_ttl = revalidate_ttl
        #: Task ID -> when (time.time()) the origin last confirmed what this host holds of it.
        self._validated: dict[str, float] = {}
        self._tasks: dict[str, PeerTask] = {}
        #: Per task being opened: its lock and how many openers want it (dropped at zero).
        self._opening: dict[str, tuple[trio.Lock, list[int]]] = {}
        self._opened: dict[str, trio.Event] = {}
        self._checks: SingleFlight[tuple[str, str]] = SingleFlight()
        #: Complete tasks whose bytes did not match their whole-object digest (each deleted).
        self.digest_mismatches = 0
        self._stack = contextlib.AsyncExitStack()
        self._nursery: trio.Nursery | None = None

    # --------------------------------------------------------- lifecycle
    async def __aenter__(self) -> TaskManager:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        if self.idle_timeout > 0:
            self._nursery.start_soon(self._sweep_idle)
        return self

    async def _sweep_idle(self) -> None:
        """Forget tasks nobody holds, reads, fetches or pins, once idle for ``idle_timeout``.

        A long-running daemon otherwise keeps every task it ever opened in memory, with its
        background work — and an open task counts as in use for the GC, whose TTL then never
        applies. A forgotten task's pieces stay on disk; the next reader opens it again."""
        while True:
            await trio.sleep(min(60.0, self.idle_timeout / 4))
            now = time.monotonic()
            for tid, task in list(self._tasks.items()):
                if task.idle(now, self.idle_timeout):
                    log.debug("task=%s event=task_forgotten reason=idle", tid)
                    self.forget(tid)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()  # every task's background work ends with the manager
        self._tasks.clear()
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # Background jobs never raise (Background guards them), so a group here holds the
            # error of the block this manager wrapped: give the caller back their own exception.
            leaves = _leaves(group)
            if exc is not None and len(leaves) == 1 and leaves[0] is exc:
                raise exc from None
            raise
        finally:
            self._nursery = None

    # ------------------------------------------------------------- tasks
    async def open(self, request: DownloadRequest) -> PeerTask:
        """The PeerTask for ``request``; what it is comes from the cheapest source that can say:

        * local pieces confirmed (or created) within ``revalidate_ttl``: nothing is asked;
        * local pieces older than that: a conditional HEAD; they are kept when the origin confirms
          the object is unchanged (304, or matching ETag/Last-Modified), dropped when it changed,
          and served as they are when the origin cannot be reached (stale-if-error);
        * nothing local, and the request knows the size of a small object (a listing, a manifest):
          no request at all before its one GET;
        * otherwise the swarm first (the scheduler's StatTask: size and the validators the peer that
          fetched it from the origin reported), the origin's HEAD only when no member holds it.
        """
        if self._nursery is None:
            raise RuntimeError("TaskManager.open outside `async with TaskManager(...)`")
        source = self.sources.for_url(request.url)
        tid = request.task_id
        lock, wanted = self._opening.setdefault(tid, (trio.Lock(), [0]))
        wanted[0] += 1
        try:
            async with lock:
                return await self._open_locked(request, source)
        finally:
            wanted[0] -= 1
            if not wanted[0]:
                del self._opening[tid]

    async def _open_locked(self, request: DownloadRequest, source: Source) -> PeerTask:
        """:meth:`open`, with the task's lock held."""
        assert self._nursery is not None
        tid = request.task_id
        task = self._tasks.get(tid)
        if task is not None and task.store.closed:
            # Its store was deleted under it (nothing should, see in_use; if it happens, the task
            # is opened afresh rather than failing every read until it is forgotten).
            log.warning("task=%s event=task_store_closed action=reopen", tid)
            self.forget(tid)
            task = None
        if task is not None:
            task.last_used = time.monotonic()
            return task
        listed = request.size if _small(request.size) else None
        created = False
        store: TaskStore | None
        if listed is not None:
            # A small object a listing described: its metadata is known before its store is looked
            # up, so opening or creating the store is one hop to a worker thread, not two.
            stat = SourceStat(url=request.url, content_length=listed, etag=request.etag)
            store, created = await trio.to_thread.run_sync(
                self.storage.open_or_create, tid, self._meta(request, stat, listed)
            )
        else:
            store = await trio.to_thread.run_sync(self.storage.open_task, tid)
        if created:
            self._validated[tid] = time.time()
        elif store is not None and (store.meta.imported or self._still_valid(store.meta)):
            # Seeded from a local file (no origin to revalidate against), or confirmed recently.
            meta = store.meta
            stat = _stat_of(request.url, meta)
        elif store is not None:
            meta = store.meta
            stat = await self._revalidate(source, request, meta)
            if not (stat.not_modified or meta.same_content_as(stat.content_length, stat.etag, stat.last_modified)):
                log.info("task=%s event=origin_changed action=restart url=%s", tid, request.url)
                store = None
                self._validated.pop(tid, None)
        elif listed is not None:
            pass  # the listing's stat, above
        else:
            stat = await self._stat(source, request)
        if store is None:
            if stat.content_length is None:
                raise SourceError(f"{request.url}: the origin does not report the object's size")
            try:  # sources bound what they parse; the swarm's word (a scheduler's StatTask) too
                size = check_size(stat.content_length)
            except ValueError as exc:
                raise SourceError(f"{request.url}: unusable object size: {exc}") from None
            store = await trio.to_thread.run_sync(self.storage.create_task, self._meta(request, stat, size))
            self._validated[tid] = time.time()
        background = await Background.open(self._nursery, tid)
        fetcher = self.swarm.fetcher(request)
        task = PeerTask(
            store,
            source,
            stat,
            fetcher=fetcher,
            background=background,
            # Pieces go straight to where the origin redirected: credentials only if that is the same origin.
            headers=forwarded_headers(request.url, stat.url, request.headers),
            buffers=self.buffers,
        )
        if fetcher.runs_in_background and not store.is_complete():
            try:
                await background.start(fetcher.run, task)  # P2P: registered with a scheduler
            except BaseException:
                background.cancel()
                raise
        self._tasks[tid] = task
        self._opened.pop(tid, trio.Event()).set()
        return task

    @staticmethod
    def _meta(request: DownloadRequest, stat: SourceStat, size: int) -> TaskMeta:
        """A new task's metadata: ``size`` (checked) in pieces of the request's or the rule's length."""
        piece_length = request.piece_length or piece_length_for(size)
        if piece_count(size, piece_length) > MAX_PIECE_COUNT:
            raise UsageError(
                f"{request.url}: {size} bytes in pieces of {piece_length} is over {MAX_PIECE_COUNT} pieces"
            )
        return TaskMeta(
            task_id=request.task_id,
            url=request.url,
            content_length=size,
            piece_length=piece_length,
            etag=stat.etag,
            last_modified=stat.last_modified,
            content_type=stat.content_type,
            tag=request.tag,
            application=request.application,
        )

    def _still_valid(self, meta: TaskMeta) -> bool:
        confirmed = max(meta.created_at, self._validated.get(meta.task_id, 0.0))
        return time.time() - confirmed < self.revalidate_ttl

    async def _revalidate(self, source: Source, request: DownloadRequest, meta: TaskMeta) -> SourceStat:
        """A conditional stat of local pieces; the origin being unreachable keeps them (stale-if-error)."""
        try:
            stat = await source.stat(
                request.url,
                headers=request.headers,
                validators=Validators(etag=meta.etag, last_modified=meta.last_modified),
            )
        except SourceError as exc:
            if exc.status is not None:
                raise  # the origin answered: 404, 403, ... is its word on the object
            log.info("task=%s event=revalidate_failed action=serve_local error=%s", meta.task_id, exc)
            return _stat_of(request.url, meta)
        self._validated[meta.task_id] = time.time()
        return stat

    async def _stat(self, source: Source, request: DownloadRequest) -> SourceStat:
        """What the object is: from the swarm when a member holds it, else from the origin."""
        stat = await self.swarm.stat(request)
        if stat is not None:
            log.debug("task=%s event=swarm_metadata size=%s etag=%s", request.task_id, stat.content_length, stat.etag)
            return stat
        return await source.stat(request.url, headers=request.headers)

    def active(self, tid: str) -> PeerTask | None:
        """The task's PeerTask if this process has it open."""
        return self._tasks.get(tid)

    def in_use(self, tid: str) -> bool:
        """Open here, or being opened (its store exists, its PeerTask not yet): the GC must not
        delete it (a deletion then closed the store under the task, and every read failed)."""
        return tid in self._tasks or tid in self._opening

    async def wait_active(self, tid: str, timeout: float) -> PeerTask | None:
        """The task's PeerTask once something here opens it (None after ``timeout``).

        A child may ask a parent about a task a moment before the parent (a
        seed just triggered, say) has opened it."""
        with trio.move_on_after(timeout):
            while tid not in self._tasks:
                await self._opened.setdefault(tid, trio.Event()).wait()
        return self._tasks.get(tid)

    def forget(self, tid: str) -> None:
        """Drop the in-memory task and end its background work (its pieces stay on disk)."""
        task = self._tasks.pop(tid, None)
        if task is not None:
            task.background.cancel()

    async def delete(self, tid: str) -> None:
        """Forget the task and delete its pieces and metadata."""
        task = self._tasks.pop(tid, None)
        with trio.CancelScope(shield=True):  # also when called from the task's own background
            await trio.to_thread.run_sync(self.storage.delete_task, tid)
        if task is not None:
            task.background.cancel()

    # -------------------------------------------------- whole-object check
    async def verify(
        self,
        task: PeerTask,
        expected: ExpectedDigest | None = None,
        *,
        concurrency: int = 8,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Make ``task`` complete with every piece verified and, with ``expected``, the whole object
        matching it — the one such check for ``dffs get``, the proxy's blobs and the mount's manifests.

        Missing pieces are fetched (``concurrency`` at a time); corrupt ones are dropped and fetched
        again, up to VERIFY_ROUNDS times. A whole-object mismatch deletes the task and raises
        DigestMismatch: the cache keeps no bytes a digest rejected, and the next reader starts
        over. Single flight per task and digest; done once per process while the task stays
        complete. ``on_progress`` gets bytes added (negative for pieces dropped).
        """
        label = str(expected) if expected is not None else ""
        progress = on_progress or _ignore

        def done() -> bool:
            return label in task.verified_digests and task.store.is_complete()

        async def check() -> None:
            for round_ in range(VERIFY_ROUNDS):
                self._ensure_current(task)
                await task.fetch_all(concurrency=concurrency, on_progress=progress, report_present=round_ == 0)
                self._ensure_current(task)
                try:
                    dropped = await trio.to_thread.run_sync(verify_task, task.store, expected)
                except OSError as exc:
                    raise StorageError(f"task {task.task_id}: cannot read its pieces: {exc.strerror}") from None
                except DigestMismatch:
                    self.digest_mismatches += 1
                    # Info: the caller reports it (dffs get's one-line error, the proxy's and mount's warnings).
                    log.info(
                        "task=%s event=digest_mismatch action=delete expected=%s url=%s",
                        task.task_id,
                        expected,
                        task.store.meta.url,
                    )
                    await self.delete(task.task_id)
                    raise
                if not dropped:
                    task.verified_digests.add(label)
                    if expected is not None:
                        log.info("task=%s event=digest_verified digest=%s", task.task_id, expected)
                    return
                log.warning("task=%s event=refetch_corrupt_pieces pieces=%s", task.task_id, dropped)
                progress(-sum(task.store.span(n).length for n in dropped))
            raise StorageError(f"task {task.task_id}: pieces keep failing verification")

        await self._checks.run((task.task_id, label), check, done=done)

    def _ensure_current(self, task: PeerTask) -> None:
        """A task deleted meanwhile (a mismatch found by another reader) is not checked again."""
        if self._tasks.get(task.task_id) is not task:
            raise StorageError(f"task {task.task_id} was dropped while being read")


def _small(size: int | None) -> bool:
    """A size a listing gave for an object of one piece: one GET fetches it whole, so no version can mix."""
    return size is not None and 0 <= size <= piece_length_for(size)


def _stat_of(url: str, meta: TaskMeta) -> SourceStat:
    return SourceStat(
        url=url,
        content_length=meta.content_length,
        etag=meta.etag,
        last_modified=meta.last_modified,
        content_type=meta.content_type,
    )


def _ignore(n: int) -> None:
    pass


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for inner in group.exceptions:
        out.extend(_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return out
