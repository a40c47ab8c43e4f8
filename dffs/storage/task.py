"""One task on disk: a sparse content file, its metadata and its piece journal.

Layout under ``DATA_DIR/tasks/<id[:2]>/<id>/``::

    meta.json       TaskMeta, written once (atomically) when the task is created
    content         the object's bytes, each piece at its offset; holes where absent
    pieces.journal  append-only PieceRecords (see journal.py)
    clean           exists only while the task is closed after a clean shutdown

Crash safety: a piece's record is appended only after its bytes are written,
so after ``kill -9`` every recorded piece is on disk. A task opened without
the ``clean`` marker (a crash, or a power loss that may have lost page-cache
data) re-verifies every recorded piece against its digest before trusting it.
Independently, every piece is verified the first time this process serves
it, so bytes damaged at rest never reach a reader.

Methods are synchronous and thread-safe: the download layer calls the I/O
ones from worker threads so disk writes and hashing run off the trio loop.

Open files are a bounded resource (two per task): the storage manager may
*park* a store nobody is using — its descriptors closed, everything else kept
in memory — and the store reopens them by itself on next use. A store is in
use while any of its pieces is pinned or one of its own methods runs, so a
caller that reads :attr:`TaskStore.content_fd` must hold a pin meanwhile
(every reader does: the mount, the proxy and the upload server pin the pieces
they serve, and dup the descriptor before an await).

Files are private to the daemon: directories 0700, files 0600, whatever the
umask (a cache may hold what only its user could fetch).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import attrs

from dffs.digest import PIECE_DIGEST_SIZE, piece_digest
from dffs.errors import StorageError
from dffs.idgen import PieceSpan, piece_span
from dffs.storage import journal
from dffs.storage.memory import MemoryTier
from dffs.storage.meta import TaskMeta

log = logging.getLogger(__name__)

META_FILE = "meta.json"
CONTENT_FILE = "content"
JOURNAL_FILE = "pieces.journal"
CLEAN_MARKER = "clean"
#: Its mtime is the task's last access (persisted cheaply, so LRU survives a restart).
ACCESS_FILE = "access"
#: The access file is touched at most this often per task (seconds).
ACCESS_PERSIST_INTERVAL = 5.0

_VERIFY_CHUNK = 4 * 1024 * 1024
#: Times a piece is written again when its range was punched while being written (then an error).
_WRITE_ATTEMPTS = 5
#: Every file of a task (content, journal, metadata, markers).
FILE_MODE = 0o600
DIR_MODE = 0o700
#: errno values that say a task's files are gone or garbage (reset it), not that the disk is unwell.
_CORRUPT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})


class TaskCorrupt(StorageError):
    """A task's files are provably unusable (missing, garbage): the cache may start it over.

    Any other StorageError while opening a task (EIO, EMFILE, ENOSPC, EACCES...) may pass: the
    task is left as it is and that request fails."""


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a task file, created 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    if flags & os.O_CREAT:
        try:
            os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
    return fd


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` whole (a temporary file renamed over it).

    ``durable`` also fsyncs it first, so that a power loss cannot leave the new name empty.
    A task's metadata skips that (it cost a task most of its creation): a process crash
    loses nothing the kernel has, and a power loss that empties ``meta.json`` makes the task
    unreadable (TaskCorrupt), which is deleted and fetched again, never served."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _storage_error(directory: Path, what: str, exc: BaseException) -> StorageError:
    """Corrupt for garbage or missing files, a plain (transient) StorageError for the rest."""
    if isinstance(exc, OSError) and exc.errno not in _CORRUPT_ERRNOS:
        return StorageError(f"task {directory.name}: {what}: {exc.strerror or exc}")
    return TaskCorrupt(f"task {directory.name}: {what}: {exc}")


class WriteHealth:
    """Whether the last piece write in a data dir failed (shared by its stores).

    A reader may be answered before its piece is stored (a cold read's bytes come
    straight from the origin), which on a full or read-only disk would make every
    small read one more origin request and one more failed piece: a crawl that
    looks like a hang. While writes fail, readers wait for the stored piece
    instead, so they get the write's error; every such read tries the write again,
    so the first one that succeeds (space is back) clears this."""

    def __init__(self) -> None:
        self.failing: str | None = None

    def failed(self, cause: str) -> None:
        self.failing = cause

    def ok(self) -> None:
        self.failing = None


class TaskStore:
    """Pieces of one task. Create with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        meta: TaskMeta,
        content_fd: int,
        journal_fd: int,
        present: dict[int, journal.PieceRecord],
        *,
        memory: MemoryTier | None = None,
        on_usage_change: Callable[[int], None] | None = None,
        before_write: Callable[[int], None] | None = None,
        reclaim: Callable[[int], int] | None = None,
        write_health: WriteHealth | None = None,
        clock: Callable[[], float] = time.time,
        on_files_opened: Callable[[TaskStore], None] | None = None,
    ):
        self.directory = directory
        self.meta = meta
        self._content_fd = content_fd
        #: Where the task's byte 0 is in the content file (0: a file of its own; see small.py).
        self._base = 0
        self._journal_fd = journal_fd
        self._present = present
        self._verified: set[int] = set()
        self._lock = threading.Lock()
        #: ``pwrite``s of piece bytes in flight (outside the lock): a detach waits for them, or a
        #: write landing in the old file after its copy would be recorded but missing.
        self._content_writes = 0
        #: Made by the first detach that has to wait (rare; a store per small file costs less without).
        self._content_writes_done: threading.Condition | None = None
        #: Per piece, how many times its range was punched (under the lock). A write records its
        #: piece only if this did not change since its ``pwrite`` began: a punch landing between a
        #: write's bytes and its record would otherwise leave a hole recorded present and verified.
        self._punches: Counter[int] = Counter()
        self._memory = memory
        self._on_usage_change = on_usage_change or (lambda delta: None)
        #: Called with a new piece's length before it is written (the GC makes room);
        #: what it returns, if callable, is called once the write is over.
        self._before_write = before_write
        #: Called with a piece's length when writing it hit ENOSPC; returns the bytes it freed.
        self._reclaim = reclaim
        self.write_health = write_health or WriteHealth()
        self._closed = False
        #: Methods of this store running now: its files are not parked under them.
        self._users = 0
        #: Called (outside the lock) after parked files were opened again: the manager's LRU.
        self._on_files_opened = on_files_opened or (lambda store: None)
        #: Pieces being read or uploaded right now: never evicted (refcounts).
        self._pins: Counter[int] = Counter()
        #: Wall-clock last access per piece, this process; the task's is persisted.
        #: ``clock`` stamps them (injected so tests can order accesses exactly).
        self._clock = clock
        self._access: dict[int, float] = {}
        self.last_access = read_last_access(directory, meta) if self.owns_files else meta.created_at
        self._access_persisted = 0.0

    # ----------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, directory: Path, meta: TaskMeta, **kwargs) -> TaskStore:
        """Start a task from nothing, replacing whatever was in ``directory``."""
        fresh = False
        for level in (directory.parent, directory):  # tasks/<id[:2]>/<id>, private whatever the umask
            try:
                level.mkdir(mode=DIR_MODE)
                fresh = True
            except FileExistsError:
                fresh = False
            os.chmod(level, DIR_MODE)
        if not fresh:  # an older copy's files: none of them may survive into the new task
            for name in (CLEAN_MARKER, JOURNAL_FILE, CONTENT_FILE):
                (directory / name).unlink(missing_ok=True)
        write_atomically(directory / META_FILE, meta.to_json().encode(), durable=False)
        content_fd = open_private(directory / CONTENT_FILE, os.O_RDWR | os.O_CREAT)
        try:
            os.ftruncate(content_fd, meta.content_length)  # sparse: no blocks yet
            journal_fd = open_private(directory / JOURNAL_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        except OSError:
            os.close(content_fd)
            raise
        try:
            os.write(journal_fd, journal.encode_header(meta.piece_length))
        except OSError:
            os.close(content_fd)
            os.close(journal_fd)
            raise
        store = cls(directory, meta, content_fd, journal_fd, {}, **kwargs)
        # The task's creation time stands for its last access (read_last_access) until the access
        # file is first written: a fresh task need not create it on its first read.
        store._access_persisted = store._clock()
        return store

    @classmethod
    def open(cls, directory: Path, **kwargs) -> TaskStore:
        """Reopen a task; raises TaskCorrupt if its files are unusable, StorageError if the disk
        fails to give them (EIO, EMFILE...: nothing is changed then)."""
        meta = read_meta(directory)
        clean = (directory / CLEAN_MARKER).exists()
        try:
            content_fd = os.open(directory / CONTENT_FILE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error(directory, "content file", exc) from exc
        try:
            journal_fd = os.open(directory / JOURNAL_FILE, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            os.close(content_fd)
            raise _storage_error(directory, "piece journal", exc) from exc
        try:
            present = _read_journal(directory, meta, journal_fd)
        except BaseException:
            os.close(content_fd)
            os.close(journal_fd)
            raise
        on_usage_change = kwargs.pop("on_usage_change", None)
        store = cls(directory, meta, content_fd, journal_fd, present, **kwargs)
        try:
            (directory / CLEAN_MARKER).unlink(missing_ok=True)
            if not clean:
                dropped = store.verify_all()
                if dropped:
                    log.warning("task=%s event=recovery_dropped_pieces pieces=%s", meta.task_id, dropped)
                store._compact_journal()
        except OSError as exc:
            store.close_dirty()
            raise _storage_error(directory, "recovery", exc) from exc
        except BaseException:
            store.close_dirty()
            raise
        if on_usage_change is not None:
            store._on_usage_change = on_usage_change
            on_usage_change(store.present_bytes())
        return store

    def close(self) -> None:
        """Close files; leave the clean marker so the next open trusts the journal."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_files_locked()
        if self.last_access > self._access_persisted:  # the LRU order survives a clean restart exactly
            self._persist_access(self.last_access)
        try:
            (self.directory / CLEAN_MARKER).touch(mode=FILE_MODE)
        except OSError as exc:  # the next open verifies every piece instead
            log.warning("task=%s event=clean_marker_failed error=%s", self.task_id, exc.strerror)

    def close_dirty(self) -> None:
        """Close without the clean marker (tests use it to simulate a crash)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_files_locked()

    def _close_files_locked(self) -> None:
        for fd in (self._journal_fd, self._content_fd):
            if fd >= 0:
                os.close(fd)
        self._journal_fd = self._content_fd = -1

    @property
    def closed(self) -> bool:
        """Closed for good (deleted, replaced, or the storage shut down): a new store serves the task."""
        return self._closed

    # ------------------------------------------------------- parked files
    @property
    def files_open(self) -> bool:
        return self._content_fd >= 0

    @property
    def in_use(self) -> bool:
        return bool(self._users or self._pins)

    def park(self) -> bool:
        """Close this store's files if nobody is using it (the manager's LRU); True if closed.

        Never waits: a store busy in another thread is simply not parked now."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._closed or self._users or self._pins or self._content_fd < 0:
                return False
            self._close_files_locked()
            return True
        finally:
            self._lock.release()

    def _open_files_locked(self) -> bool:
        """Reopen parked files (under the lock); True when they had been parked."""
        if self._closed:
            raise StorageError(f"task {self.task_id} is closed")
        if self._content_fd >= 0:
            return False
        try:
            content_fd = os.open(self.content_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error(self.directory, "reopening the content file", exc) from None
        try:
            journal_fd = os.open(self.directory / JOURNAL_FILE, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            os.close(content_fd)
            raise _storage_error(self.directory, "reopening the piece journal", exc) from None
        self._content_fd, self._journal_fd = content_fd, journal_fd
        return True

    @contextmanager
    def _in_use(self):
        """The store's files are open, and stay open (not parked) for the block."""
        with self._lock:
            reopened = self._open_files_locked()
            self._users += 1
        try:
            if reopened:
                self._on_files_opened(self)
            yield
        finally:
            with self._lock:
                self._users -= 1

    # --------------------------------------------------------------- state
    @property
    def task_id(self) -> str:
        return self.meta.task_id

    @property
    def content_path(self) -> Path:
        return self.directory / CONTENT_FILE

    @property
    def content_fd(self) -> int:
        """The content file's descriptor, reopened if it was parked: hold a pin while using it."""
        with self._lock:
            reopened = self._open_files_locked()
            fd = self._content_fd
        if reopened:
            self._on_files_opened(self)
        return fd

    #: Whether the content file is the task's own (False: a shared pack, see small.py): only a
    #: file of its own may be cloned or hard-linked whole by an export.
    owns_files = True

    def content_location(self) -> tuple[int, int]:
        """(descriptor, offset of the task's byte 0 in it): hold a pin while using them.

        Every reader outside the store goes through this, never ``content_fd`` with the
        task's own offsets: a small object's bytes live at an offset of a shared pack."""
        return self.content_fd, self._base

    @contextmanager
    def files_held(self):
        """Keep the store's files open for the block (a whole-file export reads ``content_fd``)."""
        with self._in_use():
            yield self

    def span(self, number: int) -> PieceSpan:
        return piece_span(number, self.meta.content_length, self.meta.piece_length)

    def has_piece(self, number: int) -> bool:
        return number in self._present

    @property
    def memory_eligible(self) -> bool:
        """Whether this task's pieces are small enough for the memory tier."""
        return self._memory is not None and self._memory.admits(min(self.meta.piece_length, self.meta.content_length))

    def is_verified(self, number: int) -> bool:
        """Present and checked against its digest by this process."""
        return number in self._verified and number in self._present

    def present_pieces(self) -> list[int]:
        return sorted(self._present)

    def missing_pieces(self) -> list[int]:
        return [n for n in range(self.meta.piece_count) if n not in self._present]

    def is_complete(self) -> bool:
        return len(self._present) == self.meta.piece_count

    def present_bytes(self) -> int:
        return sum(r.length for r in self._present.values())

    def piece_digest(self, number: int) -> bytes | None:
        record = self._present.get(number)
        return None if record is None else record.digest

    # ------------------------------------------------------------- writing
    @property
    def writes_inline(self) -> bool:
        """Whether :meth:`write_piece` is cheap enough for the event loop (a small object's, see small.py)."""
        return False

    def write_piece(self, number: int, data, digest: bytes | None = None, *, defer_index: bool = False) -> bytes:
        """Store piece ``number`` from ``data`` (any buffer), then record it.

        Computes the digest unless the caller already did. Returns it. ``defer_index`` only
        matters to a small object (small.py); a journal record is appended at once.
        """
        span, view, digest, release = self._begin_write(number, data, digest)
        record = journal.PieceRecord(number, span.length, True, digest)
        try:
            with self._in_use():
                for _ in range(_WRITE_ATTEMPTS):
                    try:
                        punches = self._write_content(number, span, view)
                    except StorageError as exc:
                        self.write_health.failed(str(exc))
                        raise
                    with self._lock:
                        if self._closed:
                            raise StorageError(f"task {self.task_id} is closed")
                        if self._punches[number] != punches:
                            continue  # its range was punched after these bytes began: write them again
                        try:
                            _append(self._journal_fd, journal.encode_record(record))
                        except OSError as exc:
                            if number not in self._present:  # its bytes are not recorded: give their blocks back
                                self._punch_locked(number, span)
                            error = self._write_error(number, "recording", exc)
                            self.write_health.failed(str(error))
                            raise error from exc
                        self.write_health.ok()
                        had = number in self._present
                        self._present[number] = record
                        self._verified.add(number)
                        break
                else:
                    raise StorageError(
                        f"task {self.task_id}: piece {number} was removed {_WRITE_ATTEMPTS} times while being written"
                    )
        finally:
            if release is not None:
                release()
        if not had:
            self._on_usage_change(span.length)
        if self._memory is not None and self._memory.admits(span.length):
            self._memory.put((self.task_id, number), bytes(view))
        return digest

    def _begin_write(self, number: int, data, digest: bytes | None):
        """What every write of a piece does first: check its length, digest it unless the caller
        did, let the GC make room for a piece new here (the returned release, or None, is called
        once the write is over) and record the access. Returns (span, view, digest, release)."""
        span = self.span(number)
        view = memoryview(data).cast("B")
        if len(view) != span.length:
            raise StorageError(f"task {self.task_id}: piece {number} is {len(view)} bytes, expected {span.length}")
        if digest is None:
            digest = piece_digest(view)
        release = None
        if self._before_write is not None and number not in self._present:
            release = self._before_write(span.length)  # may evict to make room; returns a release
        self.touch((number,))
        return span, view, digest, release

    def _write_content(self, number: int, span: PieceSpan, view: memoryview) -> int:
        """``pwrite`` a piece's bytes; returns the piece's punch count as of before the write.

        A failed write gives back the blocks it took (a partial piece must not hold disk space
        on a full disk); on ENOSPC the ``reclaim`` hook (the GC, when a quota is set) may free
        cold pieces, and the write is tried once more."""
        for attempt in (1, 2):
            punches, error = self._pwrite_counted(number, span, view)
            if error is None:
                return punches
            # No write is counted here: the reclaim (the GC) may detach this very file.
            freed = 0
            if error.errno == errno.ENOSPC and attempt == 1 and self._reclaim is not None:
                freed = self._reclaim(span.length)
                log.warning(
                    "task=%s piece=%d event=disk_full dir=%s action=%s freed=%d",
                    self.task_id,
                    number,
                    self.directory.parent.parent.parent,
                    "retry" if freed else "fail",
                    freed,
                )
            if not freed:
                raise self._write_error(number, "writing", error) from error
        raise AssertionError("unreachable")

    def _pwrite_counted(self, number: int, span: PieceSpan, view: memoryview) -> tuple[int, OSError | None]:
        """One ``pwrite`` of a piece, counted in flight so that a detach waits for it; a failed
        one gives its blocks back. Returns the piece's punch count from before the write, and
        the error, if any."""
        with self._lock:
            self._content_writes += 1
            fd = self._content_fd
            punches = self._punches[number]
        try:
            _pwrite_all(fd, view, span.offset)
            return punches, None
        except OSError as exc:
            with self._lock:  # checked and punched at once: a concurrent copy may be recorded meanwhile
                if number not in self._present and self._content_fd == fd:
                    self._punch_locked(number, span)
            return punches, exc
        finally:
            with self._lock:
                self._content_writes -= 1
                if not self._content_writes and self._content_writes_done is not None:
                    self._content_writes_done.notify_all()

    def _write_error(self, number: int, what: str, exc: OSError) -> StorageError:
        where = self.directory.parent.parent.parent  # DATA_DIR (tasks/<id[:2]>/<id>)
        return StorageError(f"task {self.task_id}: {what} piece {number} in {where}: {exc.strerror or exc}")

    def remove_piece(self, number: int, *, unless_pinned: bool = False) -> int:
        """Forget a piece (bad digest, or evicted) and release its disk blocks; returns the
        bytes freed (0 if absent, or pinned and ``unless_pinned``).

        The record goes and the hole is punched in one hold of the lock (a detach, which may
        wait for writes in flight with the lock released, comes first and everything is checked
        again after it), and the punch counts in ``_punches``: a write whose bytes it may have
        hit is never recorded, so no piece is ever present over a hole.
        """
        span = self.span(number)
        with self._lock:
            if (unless_pinned and self._pins.get(number)) or self._closed or number not in self._present:
                return 0
            reopened = self._open_files_locked()
            self._detach_if_linked()  # may wait for writes in flight, the lock released
            # Anything may have happened while the lock was released: a pin, a close, a removal.
            if (unless_pinned and self._pins.get(number)) or self._closed:
                return 0
            record = self._present.pop(number, None)
            self._verified.discard(number)
            self._access.pop(number, None)
            if record is None:
                return 0
            reopened = self._open_files_locked() or reopened
            # The hole first: on a full disk the record may not fit, and the blocks must go
            # anyway. A present record left over a hole fails verification, which every
            # piece passes before a process serves it, so the journal never lies to a reader.
            self._punch_locked(number, span)
            try:
                _append(
                    self._journal_fd,
                    journal.encode_record(journal.PieceRecord(number, span.length, False, bytes(PIECE_DIGEST_SIZE))),
                )
            except OSError as exc:
                log.warning("task=%s piece=%d event=removal_not_journaled error=%s", self.task_id, number, exc.strerror)
        if reopened:
            self._on_files_opened(self)
        if self._memory is not None:
            self._memory.discard((self.task_id, number))
        self._on_usage_change(-span.length)
        return span.length

    # ------------------------------------------------- access, pins, eviction
    def touch(self, numbers: Iterable[int] = ()) -> None:
        """Record an access (for LRU eviction); persists the task's at most every few seconds."""
        now = self._clock()
        for number in numbers:
            self._access[number] = now
        self.last_access = now
        if now - self._access_persisted >= ACCESS_PERSIST_INTERVAL and not self._closed:
            self._persist_access(now)

    def _persist_access(self, when: float) -> None:
        self._access_persisted = when
        path = self.directory / ACCESS_FILE
        try:
            os.utime(path, (when, when))
        except FileNotFoundError:
            try:
                path.touch(mode=FILE_MODE)
                os.utime(path, (when, when))
            except OSError:
                pass
        except OSError:
            pass

    def piece_access(self, number: int) -> float:
        """When piece ``number`` was last used (the task's last access if not this process)."""
        return self._access.get(number, self.last_access)

    def pin(self, numbers: Iterable[int]) -> None:
        with self._lock:
            pins = self._pins
            for number in numbers:
                pins[number] += 1

    def unpin(self, numbers: Iterable[int]) -> None:
        with self._lock:
            pins = self._pins
            for number in numbers:
                left = pins[number] - 1
                if left > 0:
                    pins[number] = left
                else:
                    pins.pop(number, None)

    def pinned(self, numbers: Iterable[int]) -> _Pinned:
        """Pieces that must not be evicted while the block runs (a read or upload)."""
        return _Pinned(self, list(numbers))

    def pinned_pieces(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pins)

    def evict_piece(self, number: int) -> int:
        """The GC's removal: nothing happens to a pinned piece; returns the bytes freed."""
        return self.remove_piece(number, unless_pinned=True)

    def disk_bytes(self) -> int:
        """Bytes the content file occupies on disk."""
        try:
            return os.stat(self.content_path).st_blocks * 512  # no descriptor needed (it may be parked)
        except OSError:
            return 0

    # ------------------------------------------------------------- reading
    def read_piece(self, number: int) -> bytes:
        """A verified piece's bytes; StorageError if absent or corrupt."""
        if self._memory is not None:
            cached = self._memory.get((self.task_id, number))
            if cached is not None:
                return cached
        span = self.span(number)
        with self._in_use():
            data = os.pread(self._content_fd, span.length, self._base + span.offset)
        if number not in self._verified:
            if not self._check(number, data):
                raise StorageError(f"task {self.task_id}: piece {number} failed verification")
        elif number not in self._present:
            raise StorageError(f"task {self.task_id}: piece {number} is not present")
        if self._memory is not None and self._memory.admits(span.length):
            self._memory.put((self.task_id, number), data)
        return data

    def ensure_verified(self, number: int, on_bytes: Callable[[memoryview], None] | None = None) -> bool:
        """Check piece ``number`` against its digest once per process.

        Returns False (and forgets the piece) if it is absent or corrupt.
        ``on_bytes`` sees the piece's bytes in order, so a caller can hash
        the whole object in the same pass (it is called for verified pieces too).
        """
        if number not in self._present:
            return False
        if number in self._verified and on_bytes is None:
            return True
        span = self.span(number)
        with self._in_use():
            data = os.pread(self._content_fd, span.length, self._base + span.offset) if span.length else b""
        view = memoryview(data)
        if len(view) != span.length:
            self.remove_piece(number)
            return False
        if number not in self._verified and not self._check(number, view):
            return False
        if on_bytes is not None:
            on_bytes(view)
        return True

    def verify_all(self) -> list[int]:
        """Verify every recorded piece; returns the numbers that were dropped."""
        return [n for n in sorted(self._present) if not self.ensure_verified(n)]

    def _check(self, number: int, data) -> bool:
        record = self._present.get(number)
        if record is not None and piece_digest(data) == record.digest:
            with self._lock:
                self._verified.add(number)
            return True
        log.warning("task=%s piece=%d event=piece_corrupt action=drop", self.task_id, number)
        self.remove_piece(number)
        return False

    def _punch_locked(self, number: int, span: PieceSpan) -> None:
        """Punch a piece's range (under the lock), counted so a write in flight over it is not recorded."""
        self._punches[number] += 1
        _punch_hole(self._content_fd, span.offset, span.length)

    def _detach_if_linked(self) -> None:
        """Give this task a private content file if a user's output hard-links it.

        Called (under the lock) before the content is changed in place, so an
        exported file never sees holes punched or pieces rewritten. Writes only
        happen to pieces that were removed first, so this is the one gate.
        """
        if os.fstat(self._content_fd).st_nlink <= 1:
            return
        while self._content_writes:  # releases the lock while it waits
            if self._content_writes_done is None:
                self._content_writes_done = threading.Condition(self._lock)
            self._content_writes_done.wait()
        if self._closed:
            return
        self._open_files_locked()  # parked while we waited: reopen (the reopener's hook runs later)
        if os.fstat(self._content_fd).st_nlink <= 1:
            return
        tmp = self.directory / f".{CONTENT_FILE}.detach"
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            offset, length = 0, self.meta.content_length
            while offset < length:
                copied = os.copy_file_range(self._content_fd, fd, length - offset, offset, offset)
                if copied == 0:
                    break
                offset += copied
            os.ftruncate(fd, length)
            os.replace(tmp, self.content_path)
        except BaseException:
            os.close(fd)
            raise
        # The descriptor's number stays: readers that took it outside the lock (a FUSE read, an
        # upload's dup) read the private copy from now on, never a file that reused the number.
        os.dup2(fd, self._content_fd, inheritable=False)
        os.close(fd)
        log.info("task=%s event=content_detached reason=hard_linked_output", self.task_id)

    def _compact_journal(self) -> None:
        """Rewrite the journal as exactly the present pieces, atomically."""
        path = self.directory / JOURNAL_FILE
        with self._lock:
            body = journal.encode_header(self.meta.piece_length) + b"".join(journal.iter_compacted(self._present))
            write_atomically(path, body)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            if self._journal_fd >= 0:
                os.close(self._journal_fd)
                self._journal_fd = fd
            else:  # parked meanwhile: stays parked, the new journal is opened on next use
                os.close(fd)


def read_meta(directory: Path) -> TaskMeta:
    """A task's metadata; TaskCorrupt if it is garbage, StorageError if the disk will not say."""
    try:
        return TaskMeta.from_json((directory / META_FILE).read_text())
    except OSError as exc:
        raise _storage_error(directory, "metadata", exc) from exc
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise TaskCorrupt(f"task {directory.name}: unreadable metadata: {exc}") from exc


def _read_journal(directory: Path, meta: TaskMeta, journal_fd: int) -> dict[int, journal.PieceRecord]:
    """The present pieces a journal records (a torn tail cut off); TaskCorrupt when it is not one."""
    try:
        data = _read_all(journal_fd)
    except OSError as exc:
        raise _storage_error(directory, "piece journal", exc) from exc
    try:
        if journal.decode_header(data) != meta.piece_length:
            raise ValueError("journal piece length disagrees with metadata")
        records, good = journal.decode_records(data[journal.HEADER.size :])
    except ValueError as exc:
        raise TaskCorrupt(f"task {directory.name}: piece journal: {exc}") from exc
    if journal.HEADER.size + good != len(data):
        log.warning(
            "task=%s event=journal_torn_tail dropped_bytes=%d", meta.task_id, len(data) - journal.HEADER.size - good
        )
        try:
            os.ftruncate(journal_fd, journal.HEADER.size + good)
        except OSError as exc:
            raise _storage_error(directory, "piece journal", exc) from exc
    return {
        n: r
        for n, r in journal.replay(records).items()
        if 0 <= n < meta.piece_count and r.length == piece_span(n, meta.content_length, meta.piece_length).length
    }


@attrs.frozen
class TaskSummary:
    """What the GC and ``dffs ctl tasks`` need of a task, read without opening it (no descriptor kept)."""

    meta: TaskMeta
    #: (number, length) of each recorded piece.
    pieces: tuple[tuple[int, int], ...]
    disk_bytes: int
    last_access: float


def summarize(directory: Path) -> TaskSummary:
    """A closed task's summary from its files; StorageError (or TaskCorrupt) when they cannot be read."""
    meta = read_meta(directory)
    try:
        fd = os.open(directory / JOURNAL_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _storage_error(directory, "piece journal", exc) from exc
    try:
        data = _read_all(fd)
    except OSError as exc:
        raise _storage_error(directory, "piece journal", exc) from exc
    finally:
        os.close(fd)
    try:
        if journal.decode_header(data) != meta.piece_length:
            raise ValueError("journal piece length disagrees with metadata")
        records, _ = journal.decode_records(data[journal.HEADER.size :])
    except ValueError as exc:
        raise TaskCorrupt(f"task {directory.name}: piece journal: {exc}") from exc
    pieces = tuple(
        (n, r.length)
        for n, r in sorted(journal.replay(records).items())
        if 0 <= n < meta.piece_count and r.length == piece_span(n, meta.content_length, meta.piece_length).length
    )
    try:
        disk_bytes = os.stat(directory / CONTENT_FILE).st_blocks * 512
    except OSError:
        disk_bytes = 0
    return TaskSummary(meta, pieces, disk_bytes, read_last_access(directory, meta))


def read_last_access(directory: Path, meta: TaskMeta) -> float:
    """A task's persisted last access: the access file's mtime, else its creation time."""
    try:
        return os.stat(directory / ACCESS_FILE).st_mtime
    except OSError:
        return meta.created_at


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def _append(fd: int, data: bytes) -> None:
    """Append one journal record whole, or not at all: a short write (a full disk) would
    shift every later record off its boundary, so the file is cut back to where it was."""
    size = os.fstat(fd).st_size
    try:
        written = os.write(fd, data)
    except OSError:
        _truncate_quietly(fd, size)
        raise
    if written != len(data):
        _truncate_quietly(fd, size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:  # a torn tail is cut off at the next open anyway
        pass


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


_libc = None
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free a range's disk blocks, keeping the file size (best effort)."""
    if length <= 0:
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)


class _Pinned:
    """:meth:`TaskStore.pinned`'s block: a class, not a generator, as every FUSE read enters one."""

    __slots__ = ("_store", "_numbers")

    def __init__(self, store: TaskStore, numbers: list[int]):
        self._store, self._numbers = store, numbers

    def __enter__(self) -> None:
        self._store.pin(self._numbers)

    def __exit__(self, *exc: object) -> None:
        self._store.unpin(self._numbers)
