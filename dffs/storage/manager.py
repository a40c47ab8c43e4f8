"""The storage manager: where tasks live under the data dir, and how much disk they use."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dffs.errors import StorageError
from dffs.storage.memory import MemoryTier
from dffs.storage.meta import TaskMeta
from dffs.storage.task import META_FILE, TaskStore

log = logging.getLogger(__name__)

DEFAULT_MEMORY_TIER_BYTES = 64 * 1024 * 1024


class StorageManager:
    """Owns the data dir's ``tasks/`` tree; one open TaskStore per task per process."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        memory_tier_bytes: int = DEFAULT_MEMORY_TIER_BYTES,
        clock: Callable[[], float] = time.time,
    ):
        self.data_dir = Path(data_dir)
        #: Stamps pieces' last access (the GC's LRU order); wall-clock time, injectable for tests.
        self.clock = clock
        self.tasks_dir = self.data_dir / "tasks"
        try:
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot use data dir {self.data_dir}: {exc.strerror}") from exc
        self.memory = MemoryTier(memory_tier_bytes)
        self._open: dict[str, TaskStore] = {}
        self._lock = threading.Lock()
        self._used_bytes = 0
        self._usage_lock = threading.Lock()
        #: Called (in the writing thread) with a new piece's length before it is
        #: written: the daemon's GC uses it to keep the disk under its watermark.
        #: It may return a callable, called once that write is over (or failed).
        self.reserve: Callable[[int], Callable[[], None] | None] | None = None

    # ------------------------------------------------------------- layout
    def task_dir(self, task_id: str) -> Path:
        if len(task_id) != 64 or not all(c in "0123456789abcdef" for c in task_id):
            raise StorageError(f"invalid task id {task_id!r}")
        return self.tasks_dir / task_id[:2] / task_id

    def task_ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.tasks_dir.glob(f"??/*/{META_FILE}"))

    # -------------------------------------------------------------- tasks
    def open_task(self, task_id: str) -> TaskStore | None:
        """The task's store if it exists on disk (None otherwise).

        A task whose files are damaged is deleted and reported as absent:
        the cache can always be refilled, a crash loop cannot.
        """
        with self._lock:
            store = self._open.get(task_id)
            if store is not None:
                return store
            directory = self.task_dir(task_id)
            if not (directory / META_FILE).exists():
                return None
            try:
                store = TaskStore.open(
                    directory,
                    memory=self.memory,
                    on_usage_change=self._account,
                    before_write=self._before_write,
                    clock=self.clock,
                )
            except StorageError as exc:
                log.warning("task=%s event=task_unusable action=delete error=%s", task_id, exc)
                shutil.rmtree(directory, ignore_errors=True)
                return None
            self._open[task_id] = store
            return store

    def create_task(self, meta: TaskMeta) -> TaskStore:
        """A fresh, empty store for ``meta``, replacing any older copy of the task."""
        with self._lock:
            old = self._open.pop(meta.task_id, None)
            if old is not None:
                self._account(-old.present_bytes())
                old.close_dirty()
            store = TaskStore.create(
                self.task_dir(meta.task_id),
                meta,
                memory=self.memory,
                on_usage_change=self._account,
                before_write=self._before_write,
                clock=self.clock,
            )
            self._open[meta.task_id] = store
            return store

    def delete_task(self, task_id: str) -> None:
        with self._lock:
            store = self._open.pop(task_id, None)
            if store is not None:
                self._account(-store.present_bytes())
                store.close_dirty()
            self.memory.discard_where(lambda key: key[0] == task_id)
            shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()

    def open_stores(self) -> dict[str, TaskStore]:
        """The tasks this process has open, by ID (a snapshot)."""
        with self._lock:
            return dict(self._open)

    # ------------------------------------------------------------- usage
    def _before_write(self, length: int):
        reserve = self.reserve
        return reserve(length) if reserve is not None else None

    def _account(self, delta: int) -> None:
        with self._usage_lock:
            self._used_bytes += delta

    @property
    def open_tasks_bytes(self) -> int:
        """Bytes of pieces present in the tasks this process has open."""
        return self._used_bytes

    def disk_usage(self) -> int:
        """Bytes the data dir's content files really occupy on disk (allocated blocks)."""
        total = 0
        for content in self.tasks_dir.glob("??/*/content"):
            try:
                total += content.stat().st_blocks * 512
            except FileNotFoundError:
                pass
        return total
