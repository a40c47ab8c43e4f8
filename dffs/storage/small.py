"""Small objects: one shared pack file and a SQLite index, instead of a directory and four files each.

A dataset of 10,000 files of 16 KiB cost 10,000 task directories, each with ``meta.json``,
``content``, ``pieces.journal`` and ``access``: creating them was the largest share of a cold
small file's time in the mount (see docs/architecture.md, *Storage*). An object of one piece,
up to :data:`SMALL_OBJECT_MAX` bytes, lives here instead::

    DATA_DIR/small/objects.pack   the bytes, each object at a 4 KiB-aligned offset (append only)
    DATA_DIR/small/objects.db     SQLite (WAL): task ID -> metadata, offset, length, digest, last access

Crash safety is the same promise as the task directories' — a crash never serves wrong bytes —
kept the same way: an object's bytes are written before its index row, every row carries the
piece's BLAKE3 digest, and every process verifies an object the first time it serves it (a
torn or lost write fails that check and the object is dropped and fetched again). Durability is
batched: rows written from the event loop wait in memory and are committed together (up to
:data:`FLUSH_BATCH` of them, or what gathered in :data:`FLUSH_AGE` seconds, by the next call made
off the loop), SQLite in WAL mode with ``synchronous=NORMAL`` syncs at checkpoints, so a crash or
power loss may forget the last objects (fetched again), never corrupt the index. Rows that
point past the end of the pack are dropped at open, and the space no row holds (bytes of writes
a crash cut off before their row) is given back.

An object that is evicted or replaced gets its blocks back by punching a hole over its range;
the pack's size only grows (holes are free), which ext4's 16 TiB file size bounds far beyond
any cache. An index or pack that cannot be used (not SQLite, wrong schema, unreadable) is logged
and started over: the cache can always be refilled, a crash loop cannot.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from dffs.digest import PIECE_DIGEST_SIZE
from dffs.errors import StorageError
from dffs.storage import journal
from dffs.storage.meta import TaskMeta
from dffs.storage.task import DIR_MODE, TaskCorrupt, TaskStore, _punch_hole, _pwrite_all, open_private

log = logging.getLogger(__name__)

SMALL_DIR = "small"
PACK_FILE = "objects.pack"
INDEX_FILE = "objects.db"
#: Largest object kept in the pack (bigger ones keep a task directory: their file creation is
#: a small share of their cost, and whole-file exports may hard-link them).
SMALL_OBJECT_MAX = 1 << 20
#: Objects start at multiples of this, so that punching an object's range frees whole blocks.
ALIGN = 4096
#: Deferred rows (see :meth:`SmallObjects.record`) are committed at the latest once this many wait.
MAX_PENDING = 1024
#: A lookup commits the deferred rows once this many wait, or once the oldest has waited
#: :data:`FLUSH_AGE` seconds: a dataset's cold files cost one transaction per batch, not one per
#: file opened (a lookup of a row still waiting is answered from memory).
FLUSH_BATCH = 256
FLUSH_AGE = 1.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    task_id TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    digest BLOB NOT NULL,
    last_access REAL NOT NULL
) WITHOUT ROWID
"""


def is_small(meta: TaskMeta, limit: int = SMALL_OBJECT_MAX) -> bool:
    """Whether a task belongs in the pack: one piece, 1 byte to ``limit`` (at most SMALL_OBJECT_MAX)."""
    return 0 < meta.content_length <= min(limit, SMALL_OBJECT_MAX) and meta.piece_count == 1


def _aligned(length: int) -> int:
    return (length + ALIGN - 1) // ALIGN * ALIGN


@attrs.frozen
class Row:
    """One object's index entry."""

    meta: TaskMeta
    offset: int
    length: int
    digest: bytes
    last_access: float


class SmallObjects:
    """The pack and its index for one data dir. Thread-safe; every method is blocking."""

    def __init__(self, data_dir: Path):
        self.directory = Path(data_dir) / SMALL_DIR
        #: The index's lock (SQLite work, which a WAL checkpoint may make slow); taken before
        #: ``_mem_lock`` when both are needed.
        self._lock = threading.Lock()
        #: The in-memory state only (the pack's end and descriptor, the deferred rows): what a
        #: write on the event loop takes, so it never waits for SQLite.
        self._mem_lock = threading.Lock()
        try:
            self.directory.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(self.directory, DIR_MODE)
        except OSError as exc:
            raise StorageError(f"cannot use {self.directory}: {exc.strerror or exc}") from exc
        self._db: sqlite3.Connection | None = None
        self.pack_fd = -1
        self._end = 0
        #: Rows recorded with ``defer`` (task ID -> the row's other columns): visible to every
        #: lookup, committed as one transaction once a batch has gathered (see :meth:`record`).
        self._pending: dict[str, tuple[str, int, int, bytes, float]] = {}
        #: When the oldest deferred row was recorded (monotonic), while any waits.
        self._pending_since = 0.0
        with self._lock:
            self._ensure_open()

    # ------------------------------------------------------------ opening
    def _ensure_open(self) -> sqlite3.Connection:
        """The index (and pack), opened again if :meth:`close` closed them; under ``_lock``."""
        if self._db is not None:
            return self._db
        try:
            opened = self._open()
        except (sqlite3.DatabaseError, TaskCorrupt) as exc:
            log.warning("event=small_store_unusable action=reset dir=%s error=%s", self.directory, exc)
            self._remove_files()
            try:
                opened = self._open()
            except (sqlite3.Error, TaskCorrupt) as again:
                raise StorageError(f"cannot use {self.directory}: {again}") from again
        except (sqlite3.Error, OSError) as exc:  # EIO, EACCES...: this request's error, files kept
            raise StorageError(f"cannot use {self.directory}: {getattr(exc, 'strerror', None) or exc}") from exc
        with self._mem_lock:
            self._db, self.pack_fd, self._end = opened
        return opened[0]

    def fd(self) -> int:
        """The pack's descriptor (reopened if closed)."""
        with self._mem_lock:
            if self.pack_fd >= 0:
                return self.pack_fd
        with self._lock:
            self._ensure_open()
            return self.pack_fd

    def _open(self) -> tuple[sqlite3.Connection, int, int]:
        path = self.directory / INDEX_FILE
        if path.exists() and path.stat().st_size and not _looks_like_sqlite(path):
            raise TaskCorrupt(f"{path} is not an SQLite database")
        if not path.exists():  # created private: SQLite gives its -wal and -shm files the same mode
            os.close(open_private(path, os.O_RDWR | os.O_CREAT))
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            columns = [row[1] for row in db.execute("PRAGMA table_info(objects)")]
            if columns != ["task_id", "meta", "offset", "length", "digest", "last_access"]:
                raise TaskCorrupt(f"{path}: unexpected columns {columns}")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise TaskCorrupt(f"{path}: {check[0] if check else 'no answer'} (quick_check)")
            os.chmod(path, 0o600)
            fd = open_private(self.directory / PACK_FILE, os.O_RDWR | os.O_CREAT)
        except BaseException:
            db.close()
            raise
        try:
            end = self._recover(db, fd)
        except BaseException:
            db.close()
            os.close(fd)
            raise
        return db, fd, end

    def _recover(self, db: sqlite3.Connection, fd: int) -> int:
        """Drop rows whose bytes cannot be in the pack, give back the space no row holds; the
        pack's end (where the next object goes)."""
        size = os.fstat(fd).st_size
        dropped = db.execute(
            "DELETE FROM objects WHERE length <= 0 OR length > ? OR offset < 0 OR offset % ? != 0"
            " OR offset + length > ?",
            (SMALL_OBJECT_MAX, ALIGN, size),
        ).rowcount
        if dropped:
            log.warning("event=small_store_rows_dropped rows=%d reason=beyond_pack", dropped)
        end = 0
        for offset, length in db.execute("SELECT offset, length FROM objects ORDER BY offset"):
            if offset > end:
                _punch_hole(fd, end, offset - end)  # a write a crash cut off before its row
            end = max(end, offset + _aligned(length))
        if size > end:
            os.ftruncate(fd, end)
        return end

    def _remove_files(self) -> None:
        for name in (INDEX_FILE, f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm", PACK_FILE):
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(f"cannot reset {self.directory}: {exc.strerror}") from exc

    def close(self) -> None:
        """Commit what waits, close the index and the pack (the next use opens them again)."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._flush_locked()
            except StorageError as exc:
                log.warning("event=small_index_batch_failed error=%s", exc)
            try:
                self._db.close()
            finally:
                with self._mem_lock:
                    self._db = None
                    os.close(self.pack_fd)
                    self.pack_fd = -1

    # -------------------------------------------------------------- index
    def lookup(self, task_id: str) -> Row | None:
        """The object's row; a row whose metadata is garbage is deleted (and None returned)."""
        with self._lock:
            with self._mem_lock:
                found = self._pending.get(task_id)  # the same columns as the SELECT's
                due = len(self._pending) >= FLUSH_BATCH or (
                    self._pending and time.monotonic() - self._pending_since >= FLUSH_AGE
                )
            if due:
                self._flush_locked()
            if found is None:
                found = self._query(
                    "SELECT meta, offset, length, digest, last_access FROM objects WHERE task_id = ?", task_id
                )
        if found is None:
            return None
        text, offset, length, digest, last_access = found
        try:
            meta = TaskMeta.from_json(text)
            if meta.task_id != task_id or meta.content_length != length or not is_small(meta):
                raise ValueError("metadata disagrees with its row")
            if not isinstance(digest, bytes) or len(digest) != PIECE_DIGEST_SIZE:
                raise ValueError("bad digest")
        except (ValueError, TypeError, RecursionError) as exc:
            log.warning("task=%s event=small_object_unusable action=delete error=%s", task_id, exc)
            self.remove(task_id)
            return None
        return Row(meta, offset, length, digest, float(last_access))

    def _query(self, sql: str, *args: object) -> tuple | None:
        db = self._ensure_open()
        try:
            return db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"small-object index {self.directory / INDEX_FILE}: {exc}") from exc

    def _run(self, sql: str, *args: object) -> None:
        db = self._ensure_open()
        try:
            db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"small-object index {self.directory / INDEX_FILE}: {exc}") from exc

    def task_ids(self) -> list[str]:
        with self._lock:
            try:
                self._flush_locked()
                return [row[0] for row in self._ensure_open().execute("SELECT task_id FROM objects")]
            except (sqlite3.Error, StorageError) as exc:
                log.warning("event=small_store_list_failed error=%s", exc)
                return []

    # ------------------------------------------------------------- writes
    def write(self, view: memoryview) -> int:
        """Append ``view`` to the pack (at a fresh aligned offset); its offset. A failed write gives
        its blocks back and raises the OSError."""
        while True:
            with self._mem_lock:
                fd = self.pack_fd
                if fd >= 0:
                    offset = self._end
                    self._end += _aligned(len(view))
                    break
            self.fd()  # closed: open it again
        try:
            _pwrite_all(fd, view, offset)
        except OSError:
            _punch_hole(fd, offset, len(view))
            raise
        return offset

    def record(
        self, meta: TaskMeta, offset: int, length: int, digest: bytes, last_access: float, *, defer: bool = False
    ) -> None:
        """Index an object written at ``offset``; the range of the row it replaces is given back.

        ``defer``: keep the row in memory for the next batch (one transaction for many objects,
        committed by a call made off the event loop — a lookup once :data:`FLUSH_BATCH` rows or
        :data:`FLUSH_AGE` seconds have gathered, a listing, the GC's pass — or at close). A crash
        before then loses only the row: its object is fetched again, and the bytes no row holds
        are given back at the next open."""
        if defer:
            with self._mem_lock:
                if not self._pending:
                    self._pending_since = time.monotonic()
                previous = self._pending.get(meta.task_id)
                self._pending[meta.task_id] = (meta.to_json(), offset, length, digest, last_access)
                if previous is not None and previous[1] != offset:
                    _punch_hole(self.pack_fd, previous[1], _aligned(previous[2]))
                backlog = len(self._pending) >= MAX_PENDING
            if backlog and self._lock.acquire(blocking=False):  # never waits for another's commit
                try:
                    self._flush_locked()
                finally:
                    self._lock.release()
            return
        with self._lock:
            self._flush_locked()
            old = self._query("SELECT offset, length FROM objects WHERE task_id = ?", meta.task_id)
            self._run(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                meta.task_id,
                meta.to_json(),
                offset,
                length,
                digest,
                last_access,
            )
            if old is not None and old[0] != offset:
                _punch_hole(self.pack_fd, old[0], _aligned(old[1]))

    def remove(self, task_id: str, offset: int | None = None) -> None:
        """Forget an object (only the row at ``offset`` when given) and give its blocks back."""
        with self._lock:
            with self._mem_lock:
                waiting = self._pending.get(task_id)
                if waiting is not None and (offset is None or waiting[1] == offset):
                    del self._pending[task_id]
                    _punch_hole(self.pack_fd, waiting[1], _aligned(waiting[2]))
            if waiting is not None and offset is not None and waiting[1] == offset:
                return
            old = self._query("SELECT offset, length FROM objects WHERE task_id = ?", task_id)
            if old is None or (offset is not None and old[0] != offset):
                return
            _punch_hole(self.pack_fd, old[0], _aligned(old[1]))  # first: a full disk must get its blocks back
            self._run("DELETE FROM objects WHERE task_id = ? AND offset = ?", task_id, old[0])

    def give_back(self, offset: int, length: int) -> None:
        """Punch the range of bytes no row will hold (a write whose recording failed)."""
        with self._mem_lock:
            if self.pack_fd >= 0:
                _punch_hole(self.pack_fd, offset, _aligned(length))

    def set_last_access(self, task_id: str, offset: int, when: float) -> None:
        with self._lock:
            if self._db is not None:
                self._flush_locked()
                self._run("UPDATE objects SET last_access = ? WHERE task_id = ? AND offset = ?", when, task_id, offset)

    def flush(self) -> None:
        """Commit the deferred rows now."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Commit the deferred rows (under ``_lock``)."""
        with self._mem_lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
        db = self._ensure_open()
        replaced = []
        try:
            db.execute("BEGIN")
            for task_id, row in pending.items():
                old = db.execute("SELECT offset, length FROM objects WHERE task_id = ?", (task_id,)).fetchone()
                db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)", (task_id, *row))
                if old is not None and old[0] != row[1]:
                    replaced.append(old)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            # The open stores keep serving them; after a restart they are fetched again.
            raise StorageError(f"small-object index {self.directory / INDEX_FILE}: {len(pending)} rows: {exc}") from exc
        for offset, length in replaced:
            _punch_hole(self.pack_fd, offset, _aligned(length))

    def disk_bytes(self) -> int:
        """Blocks the pack occupies (the objects' bytes; the index is metadata, like a task
        directory's journal, and is not counted against the quota)."""
        try:
            return os.stat(self.directory / PACK_FILE).st_blocks * 512
        except OSError:
            return 0


def _looks_like_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


class PackedStore(TaskStore):
    """A small object's TaskStore: its one piece at an offset of the shared pack, its piece record
    and metadata in the index. No files of its own: never parked, never hard-linked."""

    owns_files = False

    def __init__(
        self,
        objects: SmallObjects,
        meta: TaskMeta,
        row: Row | None,
        *,
        inline_writes: Callable[[], bool] = lambda: False,
        **kwargs,
    ):
        present = {0: journal.PieceRecord(0, row.length, True, row.digest)} if row is not None else {}
        on_usage_change = kwargs.pop("on_usage_change", None)
        super().__init__(objects.directory, meta, objects.fd(), -1, present, **kwargs)
        self._objects = objects
        self._inline_writes = inline_writes
        if row is not None:
            self._base = row.offset
            self.last_access = row.last_access
        else:
            self.last_access = meta.created_at
        self._access_persisted = self.last_access
        if on_usage_change is not None:
            self._on_usage_change = on_usage_change
            on_usage_change(self.present_bytes())

    # ------------------------------------------------------------ no own files
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            persist = 0 in self._present and self.last_access > self._access_persisted
        if persist:  # the LRU order survives a clean restart
            try:
                self._objects.set_last_access(self.task_id, self._base, self.last_access)
            except StorageError as exc:
                log.warning("task=%s event=last_access_not_saved error=%s", self.task_id, exc)

    def close_dirty(self) -> None:
        with self._lock:
            self._closed = True

    def _close_files_locked(self) -> None:
        pass

    def park(self) -> bool:
        return False

    def _open_files_locked(self) -> bool:
        if self._closed:
            raise StorageError(f"task {self.task_id} is closed")
        self._content_fd = self._objects.fd()  # the pack's, whether or not it was closed meanwhile
        return False

    @property
    def content_path(self) -> Path:
        raise StorageError(f"task {self.task_id} is a small object: it has no content file of its own")

    @property
    def content_fd(self) -> int:
        """Refused: the pack's descriptor with the task's own offsets would read another object."""
        raise StorageError(f"task {self.task_id} is a small object: read it through content_location()")

    def content_location(self) -> tuple[int, int]:
        with self._lock:
            self._open_files_locked()
            return self._content_fd, self._base

    def disk_bytes(self) -> int:
        return sum(_aligned(r.length) for r in self._present.values())

    def touch(self, numbers=()) -> None:
        """In memory only (an index write per read would cost more than the read); a clean close
        persists it."""
        now = self._clock()
        for number in numbers:
            self._access[number] = now
        self.last_access = now

    def _detach_if_linked(self) -> None:
        pass

    @property
    def writes_inline(self) -> bool:
        """A write is a page-cache ``pwrite`` of at most SMALL_OBJECT_MAX bytes and an in-memory row
        (``defer_index``): cheaper on the event loop than a hand-off to a worker thread — unless a
        quota is set, whose GC may run inside the write."""
        return self._inline_writes()

    # ----------------------------------------------------------------- pieces
    def write_piece(self, number: int, data, digest: bytes | None = None, *, defer_index: bool = False) -> bytes:
        span, view, digest, release = self._begin_write(number, data, digest)
        try:
            with self._in_use():
                offset = self._write_bytes(number, view)
                with self._lock:
                    if self._closed:
                        self._objects.give_back(offset, span.length)
                        raise StorageError(f"task {self.task_id} is closed")
                    try:
                        self._objects.record(
                            self.meta, offset, span.length, digest, self.last_access, defer=defer_index
                        )
                    except StorageError as exc:
                        self._objects.give_back(offset, span.length)
                        self.write_health.failed(str(exc))
                        raise
                    self.write_health.ok()
                    had = number in self._present
                    self._base = offset
                    self._access_persisted = self.last_access
                    self._present[number] = journal.PieceRecord(number, span.length, True, digest)
                    self._verified.add(number)
        finally:
            if release is not None:
                release()
        if not had:
            self._on_usage_change(span.length)
        if self._memory is not None and self._memory.admits(span.length):
            self._memory.put((self.task_id, number), bytes(view))
        return digest

    def _write_bytes(self, number: int, view: memoryview) -> int:
        """Append the object to the pack; on ENOSPC the reclaim hook may free room once."""
        for attempt in (1, 2):
            try:
                return self._objects.write(view)
            except OSError as exc:
                freed = 0
                if exc.errno == errno.ENOSPC and attempt == 1 and self._reclaim is not None:
                    freed = self._reclaim(len(view))
                    log.warning(
                        "task=%s piece=%d event=disk_full dir=%s action=%s freed=%d",
                        self.task_id,
                        number,
                        self._objects.directory,
                        "retry" if freed else "fail",
                        freed,
                    )
                if not freed:
                    where = self._objects.directory
                    error = StorageError(
                        f"task {self.task_id}: writing piece {number} in {where}: {exc.strerror or exc}"
                    )
                    self.write_health.failed(str(error))
                    raise error from exc
        raise AssertionError("unreachable")

    def remove_piece(self, number: int, *, unless_pinned: bool = False) -> int:
        with self._lock:
            if unless_pinned and self._pins.get(number):
                return 0
            record = self._present.pop(number, None)
            self._verified.discard(number)
            self._access.pop(number, None)
            if record is None or self._closed:
                return 0
            try:
                self._objects.remove(self.task_id, self._base)
            except StorageError as exc:  # the row stays over its bytes: verified before any use
                log.warning("task=%s piece=%d event=removal_not_indexed error=%s", self.task_id, number, exc)
        if self._memory is not None:
            self._memory.discard((self.task_id, number))
        self._on_usage_change(-record.length)
        return record.length


def packed_summary_fields(row: Row) -> tuple[tuple[tuple[int, int], ...], int, float]:
    """(pieces, disk bytes, last access) of an object not open here, for the GC."""
    return ((0, row.length),), _aligned(row.length), row.last_access
