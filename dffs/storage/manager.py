"""The storage manager: where tasks live under the data dir, and how much disk they use.

It also bounds the descriptors tasks hold: every open task has two (content and
journal), so a daemon that has touched a few hundred tasks would reach the
default limit of 1024. The manager keeps the most recently used stores' files
open, up to ``max_open_files`` stores, and parks the least recently used idle
ones (:meth:`TaskStore.park`); a parked store reopens its files on next use.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from dffs.errors import StorageError
from dffs.storage.memory import MemoryTier
from dffs.storage.meta import TaskMeta
from dffs.storage.small import SMALL_OBJECT_MAX, PackedStore, SmallObjects, is_small, packed_summary_fields
from dffs.storage.task import DIR_MODE, META_FILE, TaskCorrupt, TaskStore, TaskSummary, WriteHealth, summarize

log = logging.getLogger(__name__)

DEFAULT_MEMORY_TIER_BYTES = 64 * 1024 * 1024
#: Descriptors left for everything but task files (sockets, uploads' dups, the mount, gRPC).
FD_RESERVE = 256
#: Most stores kept with open files, whatever the limit allows.
MAX_OPEN_STORES = 4096
#: Locks that serialize opening, creating and deleting one task (a task's is ``int(id[:2], 16) % this``).
TASK_LOCK_STRIPES = 64


def default_max_open_stores() -> int:
    """How many stores may keep their two files open under this process's RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_STORES
    return max(8, min(MAX_OPEN_STORES, (soft - FD_RESERVE) // 4))


class StorageManager:
    """Owns the data dir's ``tasks/`` tree; one open TaskStore per task per process."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        memory_tier_bytes: int = DEFAULT_MEMORY_TIER_BYTES,
        clock: Callable[[], float] = time.time,
        max_open_files: int | None = None,
        small_object_max: int = SMALL_OBJECT_MAX,
    ):
        self.data_dir = Path(data_dir)
        #: Stamps pieces' last access (the GC's LRU order); wall-clock time, injectable for tests.
        self.clock = clock
        self.tasks_dir = self.data_dir / "tasks"
        try:
            self.tasks_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _make_private(self.data_dir)
            _make_private(self.tasks_dir)
        except OSError as exc:
            raise StorageError(f"cannot use data dir {self.data_dir}: {exc.strerror}") from exc
        self.memory = MemoryTier(memory_tier_bytes)
        #: Objects of one small piece: one shared pack and index, not a directory each (small.py).
        self.small = SmallObjects(self.data_dir)
        #: Objects of one piece up to this size go to the pack (0: none; tests of task directories).
        self.small_object_max = small_object_max
        #: Stores whose files may stay open at once (the rest are parked).
        self.max_open_files = max_open_files if max_open_files is not None else default_max_open_stores()
        self._open: dict[str, TaskStore] = {}
        #: Stores with open files, least recently used first.
        self._files_lru: OrderedDict[str, TaskStore] = OrderedDict()
        self._lru_lock = threading.Lock()
        #: Guards ``_open`` only (held for dictionary work, never for disk work).
        self._lock = threading.Lock()
        #: Serialize the disk work of opening, creating and deleting one task, so that many
        #: tasks are opened and created at once (a dataset's readers) instead of one at a time
        #: behind a single lock; one stripe covers several tasks, which only costs them waiting.
        self._task_locks = [threading.Lock() for _ in range(TASK_LOCK_STRIPES)]
        self._used_bytes = 0
        self._usage_lock = threading.Lock()
        #: Called (in the writing thread) with a new piece's length before it is
        #: written: the daemon's GC uses it to keep the disk under its watermark.
        #: It may return a callable, called once that write is over (or failed).
        self.reserve: Callable[[int], Callable[[], None] | None] | None = None
        #: Called (in the writing thread) with a piece's length when writing it hit ENOSPC:
        #: the GC evicts cold pieces (when a quota is set); returns the bytes freed.
        self.reclaim: Callable[[int], int] | None = None
        #: Whether the two hooks above may do real work (a GC pass) inside a write; None: assume
        #: they may whenever one is set. Writes that cannot block long run on the event loop.
        self.hooks_may_block: Callable[[], bool] | None = None
        #: Whether the last piece write here failed (see WriteHealth): one for every store.
        self.write_health = WriteHealth()

    # ------------------------------------------------------------- layout
    def task_dir(self, task_id: str) -> Path:
        if len(task_id) != 64 or not all(c in "0123456789abcdef" for c in task_id):
            raise StorageError(f"invalid task id {task_id!r}")
        return self.tasks_dir / task_id[:2] / task_id

    def task_ids(self) -> list[str]:
        on_disk = {p.parent.name for p in self.tasks_dir.glob(f"??/*/{META_FILE}")}
        return sorted(on_disk.union(self.small.task_ids()))

    # -------------------------------------------------------------- tasks
    def _task_lock(self, task_id: str) -> threading.Lock:
        return self._task_locks[int(task_id[:2], 16) % TASK_LOCK_STRIPES]

    def open_task(self, task_id: str) -> TaskStore | None:
        """The task's store if it exists on disk (None otherwise).

        A task whose files are provably damaged (TaskCorrupt) is deleted and reported
        as absent: the cache can always be refilled, a crash loop cannot. Any other
        failure (EIO, EMFILE, ENOSPC...) is raised and the task left as it is: a
        transient error must not cost the pieces.
        """
        directory = self.task_dir(task_id)
        with self._task_lock(task_id):
            store, fresh = self._open_locked(task_id, directory)
        if fresh and store is not None:
            self._files_opened(store)
        return store

    def open_or_create(self, task_id: str, meta: TaskMeta) -> tuple[TaskStore, bool]:
        """The task's store, opened if it is on disk, else created from ``meta``: one call (one
        thread hop) for a small object a listing described; (store, whether it was created)."""
        if meta.task_id != task_id:
            raise StorageError(f"task {task_id}: metadata of task {meta.task_id}")
        directory = self.task_dir(task_id)
        with self._task_lock(task_id):
            found, fresh = self._open_locked(task_id, directory)
            store = found if found is not None else self._create_locked(meta, directory, absent=True)
        if fresh or found is None:
            self._files_opened(store)
        return store, found is None

    def _open_locked(self, task_id: str, directory: Path) -> tuple[TaskStore | None, bool]:
        """:meth:`open_task` with the task's lock held, without the LRU's bookkeeping; and whether
        the store was opened from disk just now."""
        with self._lock:
            store = self._open.get(task_id)
        if store is not None:
            return store, False
        if not (directory / META_FILE).exists():
            row = self.small.lookup(task_id)
            if row is None:
                return None, False
            store = PackedStore(self.small, row.meta, row, inline_writes=self._inline_writes, **self._store_hooks())
            with self._lock:
                self._open[task_id] = store
            return store, True
        try:
            store = TaskStore.open(directory, **self._store_hooks())
        except TaskCorrupt as exc:
            log.warning("task=%s event=task_unusable action=delete error=%s", task_id, exc)
            shutil.rmtree(directory, ignore_errors=True)
            return None, False
        except StorageError as exc:
            log.warning("task=%s event=task_open_failed action=keep error=%s", task_id, exc)
            raise
        with self._lock:
            self._open[task_id] = store
        return store, True

    def opened(self, task_id: str) -> TaskStore | None:
        """The task's store if this process has it open (never opens it)."""
        with self._lock:
            return self._open.get(task_id)

    def summary(self, task_id: str) -> TaskSummary | None:
        """What the GC needs of a task, from memory if it is open, else read from its files
        without opening it; None if it is not on disk (or unreadable: logged, left alone)."""
        store = self.opened(task_id)
        if store is not None:
            pieces = tuple((n, store.span(n).length) for n in store.present_pieces())
            return TaskSummary(store.meta, pieces, store.disk_bytes(), store.last_access)
        try:
            directory = self.task_dir(task_id)
            if not (directory / META_FILE).exists():
                row = self.small.lookup(task_id)
                if row is not None:
                    return TaskSummary(row.meta, *packed_summary_fields(row))
            return summarize(directory)
        except StorageError as exc:
            log.info("task=%s event=task_summary_failed error=%s", task_id, exc)
            return None

    def _store_hooks(self) -> dict:
        return dict(
            memory=self.memory,
            on_usage_change=self._account,
            before_write=self._before_write,
            reclaim=self._reclaim,
            write_health=self.write_health,
            clock=self.clock,
            on_files_opened=self._files_opened,
        )

    # ------------------------------------------------------ open files
    def _files_opened(self, store: TaskStore) -> None:
        """``store`` has its files open (new, or reopened): most recently used; park the oldest idle
        stores beyond the bound. Called without any store's lock held."""
        if not store.owns_files:  # a small object: the pack's one descriptor is the manager's
            return
        with self._lru_lock:
            self._files_lru[store.task_id] = store
            self._files_lru.move_to_end(store.task_id)
            excess = len(self._files_lru) - self.max_open_files
            if excess <= 0:
                return
            for task_id, victim in list(self._files_lru.items()):
                if excess <= 0:
                    break
                if victim is store:
                    continue
                if not victim.files_open:  # closed or parked elsewhere
                    del self._files_lru[task_id]
                    excess -= 1
                elif victim.park():
                    del self._files_lru[task_id]
                    excess -= 1
                # else: in use now (pinned, or busy in a thread): kept; the bound is met later

    @property
    def open_file_stores(self) -> int:
        """Stores whose files are open right now (for tests and metrics)."""
        with self._lock:
            return sum(1 for store in self._open.values() if store.files_open)

    def create_task(self, meta: TaskMeta) -> TaskStore:
        """A fresh, empty store for ``meta``, replacing any older copy of the task."""
        directory = self.task_dir(meta.task_id)  # checks the ID before anything is touched
        with self._task_lock(meta.task_id):
            store = self._create_locked(meta, directory)
        self._files_opened(store)
        return store

    def _create_locked(self, meta: TaskMeta, directory: Path | None = None, *, absent: bool = False) -> TaskStore:
        """:meth:`create_task` with the task's lock held (without the LRU's bookkeeping);
        ``absent``: the caller just found no copy of the task, in memory or on disk."""
        directory = directory or self.task_dir(meta.task_id)
        with self._lock:
            old = self._open.pop(meta.task_id, None)
        if old is not None:
            self._account(-old.present_bytes())
            old.close_dirty()
        small = is_small(meta, self.small_object_max)
        try:
            if not absent:  # the older copy goes, whichever layout it had
                self.small.remove(meta.task_id)
                if small and directory.exists():
                    shutil.rmtree(directory, ignore_errors=True)
            if small:
                store: TaskStore = PackedStore(
                    self.small, meta, None, inline_writes=self._inline_writes, **self._store_hooks()
                )
            else:
                # tasks/ again too: the data dir's contents may have been removed under us.
                self.tasks_dir.mkdir(mode=DIR_MODE, exist_ok=True)
                store = TaskStore.create(directory, meta, **self._store_hooks())
        except OSError as exc:  # read-only, full or gone: this request's error, named
            error = StorageError(f"task {meta.task_id}: cannot create it in {self.data_dir}: {exc.strerror or exc}")
            self.write_health.failed(str(error))
            raise error from exc
        with self._lock:
            self._open[meta.task_id] = store
        return store

    def delete_task(self, task_id: str) -> None:
        directory = self.task_dir(task_id)
        with self._task_lock(task_id):
            with self._lock:
                store = self._open.pop(task_id, None)
            if store is not None:
                self._account(-store.present_bytes())
                store.close_dirty()
            with self._lru_lock:
                self._files_lru.pop(task_id, None)
            self.memory.discard_where(lambda key: key[0] == task_id)
            self.small.remove(task_id)
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
            with self._lru_lock:
                self._files_lru.clear()
        self.small.close()

    def open_stores(self) -> dict[str, TaskStore]:
        """The tasks this process has open, by ID (a snapshot)."""
        with self._lock:
            return dict(self._open)

    # ------------------------------------------------------------- usage
    def _before_write(self, length: int):
        reserve = self.reserve
        return reserve(length) if reserve is not None else None

    def _inline_writes(self) -> bool:
        """Small objects may be written on the event loop while no GC runs inside writes (no quota)."""
        if self.reserve is None and self.reclaim is None:
            return True
        may_block = self.hooks_may_block
        return may_block is not None and not may_block()

    def _reclaim(self, length: int) -> int:
        reclaim = self.reclaim
        return reclaim(length) if reclaim is not None else 0

    def _account(self, delta: int) -> None:
        with self._usage_lock:
            self._used_bytes += delta

    @property
    def open_tasks_bytes(self) -> int:
        """Bytes of pieces present in the tasks this process has open."""
        return self._used_bytes

    def disk_usage(self) -> int:
        """Bytes the data dir's content files really occupy on disk (allocated blocks)."""
        total = self.small.disk_bytes()
        for content in self.tasks_dir.glob("??/*/content"):
            try:
                total += content.stat().st_blocks * 512
            except FileNotFoundError:
                pass
        return total


def _make_private(directory: Path) -> None:
    """Directory ``0700`` whatever the umask: the cache holds what only this user could fetch.

    Only directories this user owns are changed (a data dir given as someone else's is theirs to set)."""
    st = os.stat(directory)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)
        log.info("event=data_dir_private path=%s mode_was=%o", directory, stat.S_IMODE(st.st_mode))
